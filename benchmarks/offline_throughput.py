"""Offline throughput: Ember's continuous batching vs transformers' static batches, same process.

Default mode (the offline workload): --num-requests requests with prompt lengths uniform in
[32, 512] and output lengths uniform in [32, 256] tokens (seeded), greedy, ignore_eos.
  Ember:        one `LLM.generate` over all requests (continuous batching, chunked prefill).
  transformers: `generate` on static batches of --hf-batch-size requests in arrival order,
                left-padded, each batch run to its longest output; only the requested
                tokens count as useful output.
  Reported: generated tokens/s, total (prompt + generated) tokens/s, and Ember/transformers.

--concurrency-decode C: Ember decode throughput at exactly C concurrent sequences (C requests,
32-token prompts, 128 new tokens each): tokens/s over the decode-only steps with C sequences,
from `engine.step()` and `engine.last_step`; compared with transformers at batch C and with
llama.cpp's anchor figure (batched-bench, 32 parallel: 362 decode tok/s). Then a step-time
breakdown of decode steps at batch 1 and batch C (scheduler, tensor prep, the fused step's
projections, attention and other ops, lm_head, sampler, bookkeeping, detokenization), read
from the engine's own step profile (`engine.profiler`, ember/engine/profile.py: the rows
`ember bench throughput --profile` writes).

    python benchmarks/offline_throughput.py --num-requests 64 --dtype fp32
    python benchmarks/offline_throughput.py --num-requests 256 --dtype fp32,bf16 --output results/offline.json
    python benchmarks/offline_throughput.py --concurrency-decode 32 --dtype fp32,bf16
"""

from __future__ import annotations

import csv
import gc
import os
import random
import statistics
import tempfile
import time

from common import (PromptMaker, base_parser, environment, hf_generate, load_ember, load_hf, log,
                    parse_dtypes, peak_rss_mib, print_table, set_threads, write_json)

from ember.engine.profile import FUSED_PHASES

LLAMA_CPP_BATCH32_DECODE = 362.0  # tok/s, ../shared/anchors/baseline-cpu.md (batched-bench, 32 parallel)
LLAMA_CPP_BATCH32_OVERALL = 306.0  # generated tokens / total time, same run


def make_workload(n: int, seed: int, make: PromptMaker, prompt_range=(32, 512), output_range=(32, 256)):
    rng = random.Random(seed)
    lens = [(rng.randint(*prompt_range), rng.randint(*output_range)) for _ in range(n)]
    return [(make(p), o) for p, o in lens]


def ember_config(args) -> dict:
    cfg = {"max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens,
           "enable_prefix_caching": args.prefix_caching == "on"}
    if args.kv_cache_tokens:
        cfg["kv_cache_tokens"] = args.kv_cache_tokens
    if args.attention:
        cfg["attention"] = args.attention
    if args.linear:
        cfg["linear"] = args.linear
    return cfg


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


# --- the offline workload -----------------------------------------------------------------------
def run_ember_offline(llm, workload) -> dict:
    from ember import SamplingParams
    prompts = [{"prompt_token_ids": ids} for ids, _ in workload]
    params = [SamplingParams(temperature=0, max_tokens=o, ignore_eos=True) for _, o in workload]
    # warm-up: a few short requests through the same path
    llm.generate(prompts[:4], [SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)] * min(4, len(prompts)))
    preempt0 = llm.engine.scheduler.num_preemptions
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    dt = time.perf_counter() - t0
    gen = [len(o.outputs[0].token_ids) for o in outs]
    want = [o for _, o in workload]
    assert gen == want, "Ember did not produce the requested number of tokens"
    ttft = [o.metrics.first_token_time - o.metrics.arrival_time for o in outs]
    e2e = [o.metrics.finished_time - o.metrics.arrival_time for o in outs]
    prompt_tokens = sum(len(ids) for ids, _ in workload)
    return {"seconds": dt, "generated_tokens": sum(gen), "prompt_tokens": prompt_tokens,
            "generated_tok_s": sum(gen) / dt, "total_tok_s": (sum(gen) + prompt_tokens) / dt,
            "ttft_mean_s": statistics.mean(ttft), "ttft_p50_s": percentile(ttft, 50),
            "latency_p50_s": percentile(e2e, 50), "latency_p99_s": percentile(e2e, 99),
            "preemptions": llm.engine.scheduler.num_preemptions - preempt0}


def run_hf_offline(model, workload, batch_size: int) -> dict:
    pad = model.generation_config.pad_token_id
    hf_generate(model, [workload[0][0][:32]], 4, pad_id=pad)  # warm-up
    total_s, computed = 0.0, 0
    for b in range(0, len(workload), batch_size):
        batch = workload[b:b + batch_size]
        longest = max(o for _, o in batch)
        dt, _ = hf_generate(model, [ids for ids, _ in batch], longest, pad_id=pad)
        total_s += dt
        computed += longest * len(batch)
        log(f"  transformers batch {b // batch_size + 1}/{-(-len(workload) // batch_size)}: "
            f"{len(batch)} x {longest} new tokens in {dt:.1f} s")
    useful = sum(o for _, o in workload)
    prompt_tokens = sum(len(ids) for ids, _ in workload)
    return {"seconds": total_s, "generated_tokens": useful, "prompt_tokens": prompt_tokens,
            "generated_tok_s": useful / total_s, "total_tok_s": (useful + prompt_tokens) / total_s,
            "computed_generated_tokens": computed, "useful_fraction": useful / computed}


def offline_mode(args, threads) -> dict:
    out = []
    rows = []
    for dtype in parse_dtypes(args.dtype):
        llm = load_ember(dtype, threads, args.model, **ember_config(args))
        make = PromptMaker(llm.tokenizer, offset=5000 * (1 + args.seed))
        workload = make_workload(args.num_requests, args.seed, make)
        log(f"[{dtype}] ember: {len(workload)} requests, {sum(len(p) for p, _ in workload)} prompt tokens, "
            f"{sum(o for _, o in workload)} output tokens")
        e = run_ember_offline(llm, workload)
        e["kv_cache_tokens"] = llm.engine.num_blocks * llm.config.block_size
        log(f"[{dtype}] ember: {e['seconds']:.1f} s, {e['generated_tok_s']:.1f} generated tok/s")
        del llm
        gc.collect()
        entry = {"dtype": dtype, "num_requests": len(workload), "ember": e}
        rows.append({"dtype": dtype, "engine": "ember", "seconds": e["seconds"],
                     "generated tok/s": e["generated_tok_s"], "total tok/s": e["total_tok_s"]})
        if not args.no_hf:
            set_threads(threads)
            model = load_hf(dtype, args.model)
            log(f"[{dtype}] transformers, static batches of {args.hf_batch_size}")
            h = run_hf_offline(model, workload, args.hf_batch_size)
            del model
            gc.collect()
            entry["transformers"] = h
            entry["ratio_generated"] = e["generated_tok_s"] / h["generated_tok_s"]
            entry["ratio_total"] = e["total_tok_s"] / h["total_tok_s"]
            rows.append({"dtype": dtype, "engine": f"transformers (b={args.hf_batch_size})",
                         "seconds": h["seconds"], "generated tok/s": h["generated_tok_s"],
                         "total tok/s": h["total_tok_s"]})
            rows.append({"dtype": dtype, "engine": "ratio ember/hf", "seconds": h["seconds"] / e["seconds"],
                         "generated tok/s": entry["ratio_generated"], "total tok/s": entry["ratio_total"]})
        entry["peak_rss_mib"] = peak_rss_mib()
        out.append(entry)
    print_table(rows, title=f"offline throughput, {args.num_requests} requests "
                            f"(prompts 32-512, outputs 32-256, greedy, ignore_eos), {threads} threads")
    for entry in out:
        e = entry["ember"]
        print(f"[{entry['dtype']}] ember: TTFT mean {e['ttft_mean_s']:.2f} s, latency p50 {e['latency_p50_s']:.2f} s "
              f"p99 {e['latency_p99_s']:.2f} s, preemptions {e['preemptions']}, KV cache {e['kv_cache_tokens']} tokens")
        if "transformers" in entry:
            print(f"[{entry['dtype']}] transformers: useful fraction of generated rows "
                  f"{entry['transformers']['useful_fraction']:.2f}")
    print(f"peak RSS (whole process, both engines): {peak_rss_mib():.0f} MiB")
    return {"mode": "offline", "results": out}


# --- decode at a fixed concurrency --------------------------------------------------------------
def run_fixed_batch(engine, prompts, new_tokens: int) -> dict:
    """Add all requests, step until done; stats over decode-only steps with all sequences in."""
    from ember import SamplingParams
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    c = len(prompts)
    t0 = time.perf_counter()
    ids = [engine.add_request({"prompt_token_ids": p}, params) for p in prompts]
    steps, decode_s, decode_tokens, wall_decode = 0, 0.0, 0, 0.0
    while engine.has_unfinished():
        s0 = time.perf_counter()
        engine.step()
        s1 = time.perf_counter()
        st = engine.last_step
        steps += 1
        full_decode = st.num_seqs == c and st.num_scheduled_tokens == c
        if full_decode:
            decode_s += st.seconds
            wall_decode += s1 - s0
            decode_tokens += st.num_seqs
    total = time.perf_counter() - t0
    generated = 0
    for i in ids:
        generated += sum(len(s.output_token_ids) for s in engine.groups[i])
        engine.release(i)
    assert generated == c * new_tokens, (generated, c * new_tokens)
    return {"concurrency": c, "steps": steps, "decode_steps": decode_tokens // max(c, 1),
            "decode_tok_s": decode_tokens / decode_s if decode_s else float("nan"),
            "decode_tok_s_wall": decode_tokens / wall_decode if wall_decode else float("nan"),
            "decode_step_ms": 1000 * decode_s / max(1, decode_tokens // max(c, 1)),
            "generated_tok_s_overall": generated / total, "seconds": total}


def profiled_decode_steps(engine, prompts, new_tokens: int) -> list[dict]:
    """Run the prompts to the end with the engine's step profile on (engine/profile.py, the rows
    `--profile` writes); returns the rows of the decode steps with every sequence in."""
    batch = len(prompts)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "steps.csv")
        with engine.profiler.enable(path):
            run_fixed_batch(engine, prompts, new_tokens)
        with open(path, newline="") as f:
            return [r for r in csv.DictReader(f) if int(r["num_seqs"]) == batch and int(r["decode_rows"]) == batch]


def breakdown_rows(steps: list[dict], batch: int) -> list[dict]:
    def ms(column):  # mean ms per step; a fused column is empty in steps the fused step did not run
        return 1000 * sum(float(r[column] or 0) for r in steps) / max(len(steps), 1)

    fused = [ms(p + "_s") for p in FUSED_PHASES]
    parts = [
        ("scheduler.schedule", ms("schedule_s")),
        ("prepare (block copies, batch -> tensors)", ms("prepare_s")),
        ("fused step (C): linear projections", fused[0]),
        ("fused step (C): attention, RoPE, KV write", fused[1]),
        ("fused step (C): embed, norms, SiLU", fused[2]),
        ("forward, the rest (PyTorch path; the fused call's ctypes side)", ms("forward_s") - sum(fused)),
        ("lm_head (compute_logits)", ms("logits_s")),
        ("sampler", ms("sample_s")),
        ("update (computed tokens, cache full blocks, forks)", ms("update_s")),
        ("detokenize (append tokens, stop checks)", ms("detokenize_s")),
    ]
    step = ms("step_s") or 1e-12
    parts.append(("outside every phase (the profile's own marks, StepStats)", step - sum(v for _, v in parts)))
    rows = [{"part": name, "ms/step": v, "share %": 100 * v / step} for name, v in parts]
    rows.append({"part": f"step total (batch {batch}, {len(steps)} decode steps)", "ms/step": step, "share %": 100.0})
    return rows


def concurrency_mode(args, threads) -> dict:
    c = args.concurrency_decode
    out = []
    summary = []
    for dtype in parse_dtypes(args.dtype):
        cfg = ember_config(args)
        cfg["max_num_seqs"] = max(cfg["max_num_seqs"], c)
        llm = load_ember(dtype, threads, args.model, **cfg)
        engine = llm.engine
        make = PromptMaker(llm.tokenizer, offset=20000 * (1 + args.seed))
        log(f"[{dtype}] ember warm-up")
        run_fixed_batch(engine, [make(args.prompt_len) for _ in range(min(c, 4))], 8)
        log(f"[{dtype}] ember: {c} x ({args.prompt_len} prompt + {args.new_tokens} new)")
        prompts = [make(args.prompt_len) for _ in range(c)]
        e = run_fixed_batch(engine, prompts, args.new_tokens)
        entry = {"dtype": dtype, "ember": e}
        summary.append({"dtype": dtype, "engine": "ember", "batch": c, "decode tok/s": e["decode_tok_s"],
                        "generated/total time tok/s": e["generated_tok_s_overall"],
                        "decode step ms": e["decode_step_ms"]})
        if c == 32:
            summary.append({"dtype": dtype, "engine": "llama.cpp (anchor, Q4_1)", "batch": 32,
                            "decode tok/s": LLAMA_CPP_BATCH32_DECODE,
                            "generated/total time tok/s": LLAMA_CPP_BATCH32_OVERALL, "decode step ms": float("nan")})
            entry["ratio_vs_llama_cpp_anchor"] = e["decode_tok_s"] / LLAMA_CPP_BATCH32_DECODE
        if not args.no_breakdown:
            entry["breakdown"] = {}
            for batch in sorted({1, c}):
                bprompts = [make(args.prompt_len) for _ in range(batch)]
                log(f"[{dtype}] ember step breakdown at batch {batch}")
                rows = breakdown_rows(profiled_decode_steps(engine, bprompts, args.breakdown_tokens), batch)
                entry["breakdown"][str(batch)] = rows
                print_table(rows, title=f"[{dtype}] Ember decode step breakdown, batch {batch}")
        del llm, engine
        gc.collect()
        if not args.no_hf:
            set_threads(threads)
            model = load_hf(dtype, args.model)
            pad = model.generation_config.pad_token_id
            log(f"[{dtype}] transformers batch {c}")
            hf_generate(model, prompts[:2], 4, pad_id=pad)  # warm-up
            t1, _ = hf_generate(model, prompts, 1, pad_id=pad)
            tn, _ = hf_generate(model, prompts, args.new_tokens, pad_id=pad)
            del model
            gc.collect()
            h = {"decode_tok_s": c * (args.new_tokens - 1) / (tn - t1),
                 "generated_tok_s_overall": c * args.new_tokens / tn, "seconds": tn,
                 "decode_step_ms": 1000 * (tn - t1) / (args.new_tokens - 1)}
            entry["transformers"] = h
            entry["ratio_decode_vs_hf"] = e["decode_tok_s"] / h["decode_tok_s"]
            summary.append({"dtype": dtype, "engine": "transformers", "batch": c, "decode tok/s": h["decode_tok_s"],
                            "generated/total time tok/s": h["generated_tok_s_overall"],
                            "decode step ms": h["decode_step_ms"]})
        entry["peak_rss_mib"] = peak_rss_mib()
        out.append(entry)
    print_table(summary, title=f"decode at {c} concurrent sequences ({args.prompt_len}-token prompts, "
                               f"{args.new_tokens} new each), {threads} threads")
    for entry in out:
        line = f"[{entry['dtype']}] ember/llama.cpp anchor (batch 32 only): {entry.get('ratio_vs_llama_cpp_anchor', float('nan')):.2f}"
        if "ratio_decode_vs_hf" in entry:
            line += f"; ember/transformers (same run): {entry['ratio_decode_vs_hf']:.2f}"
        print(line)
    print("(the llama.cpp figure is from the anchors file, another run on this machine class: compare loosely)")
    print(f"peak RSS (whole process, both engines): {peak_rss_mib():.0f} MiB")
    return {"mode": "concurrency-decode", "concurrency": c, "results": out}


def main() -> None:
    ap = base_parser(__doc__.split("\n")[0])
    ap.add_argument("--num-requests", type=int, default=64, help="offline workload size (the full run: 256)")
    ap.add_argument("--hf-batch-size", type=int, default=32)
    ap.add_argument("--no-hf", action="store_true", help="measure Ember only")
    ap.add_argument("--max-num-seqs", type=int, default=64, help="Ember: most sequences per step")
    ap.add_argument("--max-num-batched-tokens", type=int, default=512, help="Ember: token budget per step")
    ap.add_argument("--kv-cache-tokens", type=int, default=0, help="Ember: KV capacity (0: engine default)")
    ap.add_argument("--prefix-caching", choices=["on", "off"], default="on")
    ap.add_argument("--attention", default=None, help="Ember: AttentionBackend (default: the engine's)")
    ap.add_argument("--concurrency-decode", type=int, default=0, metavar="C",
                    help="instead of the offline workload: decode throughput at exactly C sequences")
    ap.add_argument("--prompt-len", type=int, default=32, help="(concurrency mode) prompt tokens")
    ap.add_argument("--new-tokens", type=int, default=128, help="(concurrency mode) new tokens per sequence")
    ap.add_argument("--breakdown-tokens", type=int, default=64, help="(concurrency mode) tokens per breakdown run")
    ap.add_argument("--linear", default=None,
                    help="Ember's LinearMethod (dense, int8, int4; default: dense). transformers stays dense")
    ap.add_argument("--no-breakdown", action="store_true", help="(concurrency mode) skip the step breakdown")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    env = environment(threads)
    log(f"threads={threads} load={env['loadavg_at_start']}")
    if args.concurrency_decode:
        res = concurrency_mode(args, threads)
    else:
        res = offline_mode(args, threads)
    res.update({"env": env, "args": vars(args)})
    write_json(args.output, res)


if __name__ == "__main__":
    main()
