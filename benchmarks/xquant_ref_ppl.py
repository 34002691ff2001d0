"""XQuant by reference computation: plain (cache Q(X), 576 values a token) beside the GQA latent
(cache Q(X U), 384), scored without a cache.

Why a single pass suffices here: XQuant quantizes each token's row on its own, and attention
reads K and V rematerialized from the stored rows, its own chunk's included (Ember's codecs read
a prefill chunk's entries as stored). So a forward pass whose K/V columns are computed from the
fake-quantized layer input (ember/kv/codecs/xquant_ref.py) computes what decoding through the
cache computes, up to float noise; the GQA rows check that against the codec's decode-path
figure (benchmarks/kv_codecs.py). Plain XQuant is only here, not a codec: X is wider than K+V on
this model and never reaches the attention seam (ember/kv/codecs/xquant.py).

    .venv/bin/python benchmarks/xquant_ref_ppl.py --threads 1 --ppl-tokens 4096 --output benchmarks/results/xquant_ref_ppl4096.json
"""

from __future__ import annotations

import argparse
import json

import torch

from ember.eval.perplexity import evaluate_perplexity
from ember.kv.codecs import xquant_ref as ref
from ember.kv.codecs.xquant import kv_weights
from ember.loader import default_model_path, load_model

VARIANTS = {"fp32": None, "gqa4": ("gqa", 4, 32), "gqa2": ("gqa", 2, 32), "plain4": ("plain", 4, 32),
            "plain2": ("plain", 2, 32), "gqa4-g16": ("gqa", 4, 16)}


class FakeQuantKV(torch.nn.Module):
    """Stands in for a layer's qkv_proj: Q from X as before, K and V from the quantized cache row."""

    def __init__(self, proj, w, bias, q_size, kind, bits, group):
        super().__init__()
        self.proj, self.q_size, self.kind, self.bits, self.group = proj, q_size, kind, bits, group
        self.w, self.bias = w.double(), bias.double()
        self.u, self.s, self.vh = ref.svd(w)

    def forward(self, h):
        qkv = self.proj(h)
        x = h.double()
        if self.kind == "gqa":
            kv = ref.fake_quant(x @ self.u, self.bits, self.group) @ (self.s[:, None] * self.vh)
        else:
            kv = ref.fake_quant(x, self.bits, self.group) @ self.w
        return torch.cat([qkv[:, :self.q_size], (kv + self.bias).to(qkv.dtype)], dim=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ppl-tokens", type=int, default=4096)
    p.add_argument("--variants", default="fp32,gqa4,gqa2,plain4,plain2")
    p.add_argument("--output", default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(default_model_path(), dtype=torch.float32, linear="dense")
    from pydoc_data.topics import topics
    text = "\n\n".join(topics.values())
    model, cfg = lm.model, lm.model.cfg
    originals = [layer.qkv_proj for layer in model.layers]
    weights = [kv_weights(model, i) for i in range(cfg.num_layers)]
    rows = {}
    for name in args.variants.split(","):
        spec = VARIANTS[name]
        for i, layer in enumerate(model.layers):
            layer.qkv_proj = originals[i] if spec is None else FakeQuantKV(originals[i], *weights[i], cfg.q_size, *spec)
        r = evaluate_perplexity(model, lm.tokenizer, text, max_tokens=args.ppl_tokens, progress=False)
        width = {None: 2 * cfg.kv_size, "gqa": 2 * cfg.kv_size, "plain": cfg.hidden_size}[spec and spec[0]]
        bits, group = (32, 0) if spec is None else spec[1:]
        per_layer = width * 4 if spec is None else width * bits // 8 + width // group * 8 + 4  # + the int32 position
        rows[name] = {"ppl": r.perplexity, "values_per_token_layer": width, "bytes_per_token": per_layer * cfg.num_layers}
        print(name, rows[name], flush=True)
    for layer, orig in zip(model.layers, originals):
        layer.qkv_proj = orig
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
