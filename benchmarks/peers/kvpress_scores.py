"""Run inside the kvpress virtual environment (kvpress_env.sh): kvpress's own per-entry scores
for one prompt, every layer, for the presses Ember shares with it. Saves {press: [scores per
layer, [Hkv, T]]} with torch.save. Driven by kvpress_oracle.py; not importable from Ember."""

import importlib.metadata
import json
import os
import sys

import torch
import transformers
from kvpress import ExpectedAttentionPress, KnormPress, ObservedAttentionPress, SnapKVPress, TOVAPress

PRESSES = {"knorm": KnormPress, "snapkv": SnapKVPress, "tova": TOVAPress, "observed": ObservedAttentionPress,
           "expected-attention": ExpectedAttentionPress}


def main(gguf_path: str, ids_json: str, out_path: str) -> None:
    ids = torch.tensor([json.load(open(ids_json))])
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), dtype=torch.float32,
        attn_implementation="eager").eval()
    result = {}
    for name, cls in PRESSES.items():
        press = cls(compression_ratio=0.5)
        per_layer = {}
        score = press.score

        def recording(module, *args, _score=score, _store=per_layer):
            s = _score(module, *args)
            _store[module.layer_idx] = s[0].float().clone()
            return s
        press.score = recording
        with torch.no_grad(), press(model):
            model(ids, output_attentions=name == "observed")
        result[name] = [per_layer[i] for i in range(len(per_layer))]
        print(f"kvpress {name}: {len(per_layer)} layers scored", file=sys.stderr)
    torch.save({"scores": result, "kvpress": importlib.metadata.version("kvpress"),
                "transformers": transformers.__version__}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:4])
