"""The C linear kernels under each CPU variant (EMBER_CPU_VARIANT), same process, same threads:
one decoder layer's projections of the default model's shapes (QKV [960, 576], O [576, 576],
gate/up [3072, 576], down [576, 1536]) and the output head [49152, 576], at batch 1, 32 and a
512-row prefill chunk, per method (`int4`, `int8`; `w4a4` where registered; `dense:bf16`: dense
packed in bf16, the row-major bf16 kernels, and `dense` alone their f32 form).

Each variant's libraries are built and cached apart and `native.load` reads the variable at
every call, so one process switches variants between calls. Timing: per (method, rows), the
variants alternate call by call (a shared machine's changing load falls on each alike), and
the figure is the median over --repeats rounds of the time of one pass over the layer (or
the head), wall clock and CPU time of the process (all threads: the "cpu x" ratios, which
leave out the time other jobs hold the cores); os.getloadavg() is recorded before and after. Random weights of the real shapes
(speed does not depend on the values); the int8 head is int8's own kernel.

With --engine, the whole engine per (method, variant) instead: a model loaded and an LLM built
with EMBER_CPU_VARIANT set (the fused step's library is chosen then), the variable set again
before each timed call (the PyTorch path's kernels, the int8 head, load per call): prefill of
one --prefill-len prompt (1 output token; int4's and, under AVX-512, int8's prefill runs in the
fused step), decode at --concurrency sequences (32-token prompts: concurrency x (n - 1) tokens
over the time of n tokens minus that of 1) and single-stream decode (the same at 1 sequence);
each also per CPU second of the process (the "cpu x" ratios). `dense:bf16` loads the model in
bf16; on a CPU with native bf16 GEMMs (AVX512-BF16, AMX) set EMBER_BF16_GEMM=native, or torch's
GEMM takes the products and the variants differ only in attention and norms.
Rounds visit every (method, variant) in turn; medians of --repeats rounds after a warm-up.

    python benchmarks/isa_variants.py --repeats 15 --output benchmarks/results/isa_variants.json
    python benchmarks/isa_variants.py --engine --repeats 5 --output benchmarks/results/isa_variants_engine.json
"""

from __future__ import annotations

import os
import time

import torch
from common import base_parser, environment, log, median, print_table, set_threads, write_json

LAYER = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
HEAD = {"head": (49152, 576)}


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def method_dtype(spec: str) -> tuple[str, torch.dtype]:
    """`name[:dtype]` -> the linear method's name and the dtype it packs in (default fp32)."""
    name, _, dtype = spec.partition(":")
    return name, DTYPES[dtype or "fp32"]


def packed(method_name: str, shapes: dict[str, tuple[int, int]]) -> tuple:
    from ember.kernels.linear import get_linear_method

    name, dtype = method_dtype(method_name)
    method = get_linear_method(name)
    torch.manual_seed(0)
    params = [method.pack(torch.randn(n, k) * 0.05, None, dtype) for n, k in shapes.values()]
    weights = [method.native_weight(p, with_bias=False) for p in params]
    assert all(w is not None for w in weights), f"{method_name}: no C kernel here"
    return method, params, weights


def engine_rounds(args, variants: list[str], threads: int) -> list[dict]:
    from common import PromptMaker

    from ember import LLM, SamplingParams
    from ember.loader import default_model_path, load_model

    path = args.model or default_model_path()
    engines = {}
    for method in args.methods.split(","):
        for v in variants:
            os.environ["EMBER_CPU_VARIANT"] = v
            name, dtype = method_dtype(method)
            lm = load_model(path, dtype=dtype, linear=name)
            engines[method, v] = LLM(loaded=lm, threads=threads, linear=name, enable_prefix_caching=False,
                                     kv_cache_tokens=max(8192, args.concurrency * (32 + args.new_tokens) * 2))
    make = PromptMaker(next(iter(engines.values())).tokenizer, offset=1000 * (1 + args.seed))
    greedy = lambda n: SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)  # noqa: E731

    def batch_time(llm, prompts, n):
        t0, c0 = time.perf_counter(), time.process_time()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(n), use_tqdm=False)
        assert all(len(o.outputs[0].token_ids) == n for o in outs)
        return time.perf_counter() - t0, time.process_time() - c0

    kinds = ("prefill", "decode32", "decode1")
    got = {key: {k: [] for k in kinds} for key in engines}
    cpu = {key: {k: [] for k in kinds} for key in engines}  # the same rates per CPU second (all threads)
    for rnd in range(args.repeats + 1):
        log(f"round {rnd} of {args.repeats} (0: warm-up), load {os.getloadavg()[0]:.2f}")
        long_prompt = make(args.prefill_len)
        batch = [make(32) for _ in range(args.concurrency)]
        for key, llm in engines.items():
            os.environ["EMBER_CPU_VARIANT"] = key[1]
            dt = batch_time(llm, [long_prompt], 1)
            t1, tn = batch_time(llm, batch, 1), batch_time(llm, batch, args.new_tokens)
            s1, sn = batch_time(llm, batch[:1], 1), batch_time(llm, batch[:1], args.new_tokens)
            if rnd:
                for j, into in ((0, got[key]), (1, cpu[key])):
                    into["prefill"].append(args.prefill_len / dt[j])
                    into["decode32"].append(args.concurrency * (args.new_tokens - 1) / (tn[j] - t1[j]))
                    into["decode1"].append((args.new_tokens - 1) / (sn[j] - s1[j]))
    os.environ.pop("EMBER_CPU_VARIANT", None)
    rows = []
    for method in args.methods.split(","):
        base = {k: median(got[method, variants[0]][k]) for k in kinds}
        base_cpu = {k: median(cpu[method, variants[0]][k]) for k in kinds}
        for v in variants:
            m = {k: median(got[method, v][k]) for k in kinds}
            c = {k: median(cpu[method, v][k]) for k in kinds}
            rows.append({"method": method, "variant": v,
                         f"prefill {args.prefill_len} tok/s": round(m["prefill"], 1), "x ": round(m["prefill"] / base["prefill"], 2),
                         "cpu x ": round(c["prefill"] / base_cpu["prefill"], 2),
                         f"decode at {args.concurrency} tok/s": round(m["decode32"], 1), "x  ": round(m["decode32"] / base["decode32"], 2),
                         "cpu x  ": round(c["decode32"] / base_cpu["decode32"], 2),
                         "decode at 1 tok/s": round(m["decode1"], 1), "x   ": round(m["decode1"] / base["decode1"], 2),
                         "cpu x   ": round(c["decode1"] / base_cpu["decode1"], 2),
                         "samples": {k: [round(t, 1) for t in got[method, v][k]] for k in kinds},
                         "samples_per_cpu_second": {k: [round(t, 1) for t in cpu[method, v][k]] for k in kinds}})
    return rows


def main() -> None:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="int4,int8")
    p.add_argument("--variants", default=None, help="default: every variant this CPU runs")
    p.add_argument("--rows", default="1,32,512")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--engine", action="store_true", help="time the whole engine instead of the kernels")
    p.add_argument("--prefill-len", type=int, default=512)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    args = p.parse_args()
    threads = set_threads(args.threads)
    from ember.kernels import native

    variants = args.variants.split(",") if args.variants else native.supported_variants()
    load_before = os.getloadavg()
    if args.engine:
        results = engine_rounds(args, variants, threads)
        load_after = os.getloadavg()
        print_table([{k: v for k, v in r.items() if k != "samples"} for r in results],
                    title=f"engine by CPU variant, {threads} threads, median of {args.repeats} "
                    f"(load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; indicative)")
        write_json(args.output, {"environment": environment(threads), "loadavg_before": load_before,
                                 "loadavg_after": load_after, "variants": variants, "args": vars(args),
                                 "results": results})
        return
    results = []
    for method_name in args.methods.split(","):
        for part, shapes in (("layer", LAYER), ("head", HEAD)):
            if method_dtype(method_name)[0] not in ("int8", "dense") and part == "head":
                continue  # a quantized body keeps the int8 head
            method, params, weights = packed(method_name, shapes)
            ops_per_row = 2 * sum(n * k for n, k in shapes.values())
            for rows in (int(r) for r in args.rows.split(",")):
                if part == "head" and rows > 32:
                    continue  # prefill computes the head for its last row only
                xs = [torch.randn(rows, k) for _, k in shapes.values()]
                times: dict[str, list[float]] = {v: [] for v in variants}
                cpu: dict[str, list[float]] = {v: [] for v in variants}
                for r in range(args.repeats + 1):
                    for v in variants:
                        os.environ["EMBER_CPU_VARIANT"] = v
                        t0, c0 = time.perf_counter(), time.process_time()
                        for x, w in zip(xs, weights):
                            native.linear(x, w)
                        if r:  # the first round builds and warms up
                            times[v].append(time.perf_counter() - t0)
                            cpu[v].append(time.process_time() - c0)
                row = {"method": method_name, "part": part, "rows": rows}
                base, base_cpu = median(times[variants[0]]), median(cpu[variants[0]])
                for v in variants:
                    t = median(times[v])
                    row[f"{v} ms"] = round(t * 1e3, 3)
                    row[f"{v} GOP/s"] = round(ops_per_row * rows / t / 1e9, 1)
                    row[f"{v} x {variants[0]}"] = round(base / t, 2)
                    # CPU seconds of all threads: time spent descheduled by other jobs drops out
                    row[f"{v} cpu x {variants[0]}"] = round(base_cpu / median(cpu[v]), 2)
                results.append(row)
                log(f"{row}")
    os.environ.pop("EMBER_CPU_VARIANT", None)
    load_after = os.getloadavg()
    print_table(results, title=f"C linear kernels by CPU variant, {threads} threads, median of {args.repeats} "
                f"(load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; indicative)")
    write_json(args.output, {"environment": environment(threads), "loadavg_before": load_before,
                             "loadavg_after": load_after, "variants": variants, "results": results})


if __name__ == "__main__":
    main()
