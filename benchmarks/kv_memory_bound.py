"""Serving throughput where KV memory is the bottleneck: many long requests at a fixed
`--kv-cache-memory` that bf16 KV cannot hold at once, one engine per KV method (codec or press)
on one loaded model, run back to back in one process; ratios against bf16 KV.

Every request's prompt is a distinct slice of real text (no prefix hits), its output a fixed
number of tokens (ignore_eos). A smaller cache entry lets more sequences run per step, so the
fused decode step works on larger batches; the ratio says how much of that turns into tokens.

    .venv/bin/python benchmarks/kv_memory_bound.py --methods bf16,int8,bfp4,kivi4,snapkv:0.5 \\
        --requests 32 --prompt-len 1024 --output-len 128 --kv-cache-memory 64MiB
"""

from __future__ import annotations

import os
import time

from common import base_parser, corpus_token_ids, environment, log, set_threads, write_json  # noqa: I001

import torch

from ember import LLM, SamplingParams
from ember.eval.kv.methods import KVMethod
from ember.loader import load_model


def run(loaded, method: KVMethod, prompts, output_len: int, args) -> dict:
    llm = LLM(loaded=loaded, threads=args.threads, kv_cache_memory=args.kv_cache_memory,
              max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens, policy=args.policy,
              enable_prefix_caching=False, **method.engine_options())
    engine = llm.engine
    peak = 0
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    ids = [engine.add_request({"prompt_token_ids": p}, params) for p in prompts]
    t0 = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
        peak = max(peak, len(engine.scheduler.running))
    seconds = time.perf_counter() - t0
    for i in ids:
        engine.release(i)
    scratch = engine.kv_cache.scratch
    return {"method": method.name, "seconds": seconds, "output_tok_s": len(prompts) * output_len / seconds,
            "bytes_per_token": engine.kv_spec.bytes_per_token, "cache_tokens": engine.kv_spec.num_tokens,
            "kv_cache_bytes": engine.kv_spec.total_bytes, "scratch_bytes": engine.kv_spec.scratch_bytes,
            "scratch_grows": scratch.num_grows if scratch is not None else 0,
            "peak_running": peak, "preemptions": engine.scheduler.num_preemptions,
            "fused": engine.runner.decoder is not None,
            "loadavg_after": os.getloadavg()}  # the machine is shared: timings are indicative


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--methods", default="bf16,int8,bfp4,kivi4")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--kv-cache-memory", default="64MiB")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--policy", default="fcfs", help="scheduling policy; conservative admits a request only when "
                                                    "its peak KV fits (no recompute preemptions)")
    p.add_argument("--linear", default="auto", help="LinearMethod of the model (auto: as the file stores it)")
    args = p.parse_args()
    set_threads(args.threads)
    loaded = load_model(args.model, dtype=torch.float32 if args.dtype == "fp32" else torch.bfloat16, linear=args.linear)
    ids = corpus_token_ids(loaded.tokenizer)
    prompts = [ids[i * args.prompt_len:(i + 1) * args.prompt_len] for i in range(args.requests)]
    rows = []
    for name in args.methods.split(","):
        log(f"{name}: {args.requests} requests of {args.prompt_len} + {args.output_len} tokens "
            f"(load average {os.getloadavg()[0]:.2f}) ...")
        rows.append(run(loaded, KVMethod.parse(name), prompts, args.output_len, args))
        log(f"{name}: {rows[-1]['output_tok_s']:.1f} output tok/s, {rows[-1]['seconds']:.0f} s, "
            f"peak {rows[-1]['peak_running']} sequences")
    base = next((r for r in rows if r["method"] == "bf16"), rows[0])
    print(f"{'method':18} {'B/token':>8} {'scratch MiB':>11} {'cache tok':>9} {'peak seqs':>9} {'preempt':>7} "
          f"{'out tok/s':>9} {'vs bf16':>7} {'load 1m':>7}")
    for r in rows:
        r["vs_bf16"] = r["output_tok_s"] / base["output_tok_s"]
        print(f"{r['method']:18} {r['bytes_per_token']:8.0f} {r['scratch_bytes'] / 2**20:11.1f} {r['cache_tokens']:9d} "
              f"{r['peak_running']:9d} {r['preemptions']:7d} {r['output_tok_s']:9.1f} {r['vs_bf16']:6.2f}x "
              f"{r['loadavg_after'][0]:7.2f}", flush=True)
    write_json(args.output, {"args": vars(args), "environment": environment(args.threads), "rows": rows})


if __name__ == "__main__":
    main()
