"""Tiny smoke generation with openvino_genai.LLMPipeline on the converted IR (a few tokens).

Runs in the OpenVINO peer's environment (openvino_env.sh), never in `make test`. The scheduler
config makes LLMPipeline run on the continuous-batching backend (paged KV cache) with prefix
caching on. Prompts are sent raw (apply_chat_template off), greedy, so the text can be set beside
transformers' and vLLM's greedy continuation of the same prompt.

Usage: $PY benchmarks/peers/openvino_smoke.py [IR_DIR] [--threads 2] [--max-new-tokens 12]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("ir", nargs="?", default=str(HERE / ".openvino-models" / "smollm2-135m-int4"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    args = ap.parse_args()

    import openvino as ov
    import openvino_genai as og

    print("openvino", ov.__version__, "| openvino_genai", og.__version__)
    t = time.perf_counter()
    sc = og.SchedulerConfig()
    sc.enable_prefix_caching = True
    sc.cache_size = 1  # GiB of KV cache
    sc.max_num_seqs = 8
    pipe = og.LLMPipeline(args.ir, "CPU", scheduler_config=sc, INFERENCE_NUM_THREADS=args.threads)
    print(f"load {time.perf_counter() - t:.2f} s")
    cfg = og.GenerationConfig()
    cfg.max_new_tokens = args.max_new_tokens
    cfg.do_sample = False
    cfg.apply_chat_template = False
    prompts = ["The capital of France is", "def fibonacci(n):"]
    t = time.perf_counter()
    res = pipe.generate(prompts, cfg)
    print(f"generate {time.perf_counter() - t:.2f} s for {len(prompts)} prompts")
    for p, text in zip(prompts, res.texts):
        print(repr(p), "->", repr(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
