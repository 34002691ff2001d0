"""bfp4 key-channel layouts on a short probe: mean decode-step NLL (PyTorch path) of
`bfp4-sorted` under other permutations than its own (benchmarks/README.md, "Block floating
point"). Two windows of 96 tokens of ember/config.py; fp32 model, one thread."""

from __future__ import annotations

import torch

from benchmarks.common import model_path
from ember.eval.decode_nll import decode_window_nll
from ember.kv.codecs import bfp
from ember.loader import load_model


def main() -> None:
    torch.set_num_threads(1)
    lm = load_model(model_path(None))
    ids = torch.tensor(lm.tokenizer.encode(open("ember/config.py").read())[:2 * 96]).view(2, 96)
    nll = lambda codec: float(decode_window_nll(lm.model, ids, 0, fused=False, kv_cache_dtype=codec).mean())  # noqa: E731
    print(f"fp32 KV {nll('auto'):.4f}  bfp4 {nll('bfp4'):.4f}")
    sort_pairs, half = bfp.pairs_by_norm, lm.config.head_dim // 2
    layouts = {
        "identity (must equal bfp4)": lambda rms: torch.arange(2 * half).expand(rms.shape).clone(),
        "pairs by norm (bfp4-sorted)": sort_pairs,
        "pairs in index order": lambda rms: torch.stack([torch.arange(half), torch.arange(half) + half], -1)
                                                 .flatten().expand(rms.shape).clone(),
        "channels by norm, pairs split": lambda rms: rms.argsort(-1, descending=True),
    }
    for name, layout in layouts.items():
        bfp.pairs_by_norm = layout
        print(f"{name}: {nll('bfp4-sorted'):.4f}", flush=True)
    bfp.pairs_by_norm = sort_pairs
    # calibrated on 256 tokens of the README instead of random ids
    text = torch.tensor(lm.tokenizer.encode(open("README.md").read())[:256])
    random_ids = torch.randint
    torch.randint = lambda *args, **kwargs: text
    try:
        print(f"pairs by norm, README-calibrated: {nll('bfp4-sorted'):.4f}")
    finally:
        torch.randint = random_ids


if __name__ == "__main__":
    main()
