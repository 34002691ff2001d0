"""Ember's press scores against kvpress's own (the oracle), every layer, one real prompt.

kvpress runs in its own virtual environment (kvpress_env.sh builds it) on transformers with
the same GGUF; this script feeds both the same token ids, runs kvpress_scores.py there, and
compares per KV head: the largest score difference (relative to the largest score), and how
many of the entries kept at --ratio differ, per head (kvpress's own selection) and for the
one set per layer Ember keeps (the head mean).

    python benchmarks/peers/kvpress_oracle.py --tokens 1000 --output benchmarks/results/kvpress_oracle.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import base_parser, environment, write_json  # noqa: E402

import torch  # noqa: E402

from ember import LLM, SamplingParams  # noqa: E402
from ember.kv.press import KV_PRESSES  # noqa: E402
from ember.kv.press.window import observe_window  # noqa: E402
from ember.loader.default_model import default_model_path  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def kvpress_scores(model_path: str, ids: list[int]) -> dict:
    python = subprocess.run(["bash", os.path.join(HERE, "kvpress_env.sh")], check=True, capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        ids_path, out_path = os.path.join(tmp, "ids.json"), os.path.join(tmp, "scores.pt")
        json.dump(ids, open(ids_path, "w"))
        subprocess.run([python, os.path.join(HERE, "kvpress_scores.py"), model_path, ids_path, out_path], check=True)
        return torch.load(out_path)


def ember_scores(model_path: str, ids: list[int], names) -> dict:
    llm = LLM(model=model_path, kv_cache_tokens=len(ids) + 64, threads=2, dtype="fp32", linear="dense")
    engine = llm.engine
    rid = engine.add_request({"prompt_token_ids": ids}, SamplingParams(max_tokens=2, ignore_eos=True))
    seq = engine.groups[rid][0]
    while not seq.output_token_ids:
        engine.step()
    table, out = torch.tensor(seq.block_ids), {}
    for name in names:
        press = KV_PRESSES.create(name, 0.5)
        n = press.window(len(ids))
        window = observe_window(engine.model, engine.kv_cache, ids[len(ids) - n:], len(ids) - n, len(ids),
                                seq.block_ids) if n else None
        out[name] = [press.score(layer, *engine.kv_cache.gather(layer, table, len(ids)), window)
                     for layer in range(engine.kv_cache.num_layers)]
    return out


def compare(ours: torch.Tensor, theirs: torch.Tensor, keep: int) -> dict:
    per_head = [len(set(a.topk(keep).indices.tolist()) ^ set(b.topk(keep).indices.tolist()))
                for a, b in zip(ours, theirs)]
    shared = len(set(ours.mean(0).topk(keep).indices.tolist()) ^ set(theirs.mean(0).topk(keep).indices.tolist()))
    return {"max_rel_error": float((ours - theirs).abs().max() / theirs.abs().max()),
            "kept_differ_per_head": max(per_head), "kept_differ_shared": shared}


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--tokens", type=int, default=1000, help="prompt length (pydoc topics text)")
    p.add_argument("--ratio", type=float, default=0.5, help="share of entries removed for the kept-set check")
    args = p.parse_args()
    model_path = args.model or default_model_path()
    from pydoc_data.topics import topics
    llm_tok = LLM(model=model_path, kv_cache_tokens=64, threads=args.threads).tokenizer
    ids = llm_tok.encode("\n\n".join(topics.values())[3000:3000 + 12 * args.tokens])[:args.tokens]
    theirs = kvpress_scores(model_path, ids)
    ours = ember_scores(model_path, ids, list(theirs["scores"]))
    keep = int(len(ids) * (1 - args.ratio))
    rows = {}
    for name, layers in theirs["scores"].items():
        per_layer = [compare(o.float(), t.float(), keep) for o, t in zip(ours[name], layers)]
        rows[name] = {k: max(r[k] for r in per_layer) for k in per_layer[0]}
        print(f"{name:20s} max rel error {rows[name]['max_rel_error']:.1e}   kept entries that differ "
              f"(worst layer): per head {rows[name]['kept_differ_per_head']}, shared {rows[name]['kept_differ_shared']}"
              f" of {keep}")
    result = {"tokens": len(ids), "ratio": args.ratio, "kvpress": theirs["kvpress"],
              "transformers": theirs["transformers"], "presses": rows, "environment": environment(args.threads)}
    write_json(args.output, result)


if __name__ == "__main__":
    main()
