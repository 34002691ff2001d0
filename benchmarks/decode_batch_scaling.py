"""Decode step time against the number of sequences in it: the engine's own steps (fused where
it can), each sequence a distinct prompt of `--prompt-len` tokens, timed once every sequence is
decoding. Where the step stays flat as sequences are added, a KV cache that holds more of them
turns that straight into tokens; where each sequence adds its own arithmetic, it does not
(benchmarks/README.md, "Decode at 4k and serving where memory binds").

    .venv/bin/python benchmarks/decode_batch_scaling.py --linear dense --kv-cache-dtypes bf16,kivi4 --batches 1,2,4,6,8
"""

from __future__ import annotations

import time

from common import base_parser, corpus_token_ids, environment, log, set_threads, write_json  # noqa: I001

import torch

from ember import LLM, SamplingParams
from ember.loader import load_model


def step_ms(loaded, kv: str, batch: int, prompts, steps: int, threads: int) -> float:
    """Median wall ms of `steps` decode steps with `batch` sequences."""
    llm = LLM(loaded=loaded, threads=threads, kv_cache_dtype=kv, kv_cache_tokens=batch * (len(prompts[0]) + steps + 64),
              enable_prefix_caching=False)
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=steps + 4, ignore_eos=True)
    for p in prompts[:batch]:
        engine.add_request({"prompt_token_ids": p}, params)
    while not all(r.output_token_ids for r in engine.requests.values()):  # prefill (and the first tokens)
        engine.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    while engine.has_unfinished():
        engine.step()
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--linear", default="auto", help="LinearMethod of the model (auto: as the file stores it)")
    p.add_argument("--kv-cache-dtypes", default="bf16,kivi4")
    p.add_argument("--batches", default="1,2,4,6,8")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=32)
    args = p.parse_args()
    set_threads(args.threads)
    loaded = load_model(args.model, dtype=torch.float32 if args.dtype == "fp32" else torch.bfloat16, linear=args.linear)
    batches = [int(b) for b in args.batches.split(",")]
    ids = corpus_token_ids(loaded.tokenizer)
    prompts = [ids[i * args.prompt_len:(i + 1) * args.prompt_len] for i in range(max(batches))]
    rows = []
    for kv in args.kv_cache_dtypes.split(","):
        for b in batches:
            ms = step_ms(loaded, kv, b, prompts, args.steps, args.threads)
            rows.append({"kv_cache_dtype": kv, "batch": b, "step_ms": ms, "tok_s": 1000 * b / ms})
            log(f"{kv} batch {b}: {ms:.1f} ms a step, {1000 * b / ms:.0f} tok/s")
    write_json(args.output, {"args": vars(args), "environment": environment(args.threads), "rows": rows})


if __name__ == "__main__":
    main()
