"""The C linear kernels under each CPU variant (EMBER_CPU_VARIANT), same process, same threads:
one decoder layer's projections of the default model's shapes (QKV [960, 576], O [576, 576],
gate/up [3072, 576], down [576, 1536]) and the output head [49152, 576], at batch 1, 32 and a
512-row prefill chunk, per method (`int4`, `int8`; `w4a4` where registered).

Each variant's libraries are built and cached apart and `native.load` reads the variable at
every call, so one process switches variants between calls. Timing: per (method, rows), the
variants alternate call by call (a shared machine's changing load falls on each alike), and
the figure is the median over --repeats rounds of the time of one pass over the layer (or
the head); os.getloadavg() is recorded before and after. Random weights of the real shapes
(speed does not depend on the values); the int8 head is int8's own kernel.

    python benchmarks/isa_variants.py --repeats 15 --output benchmarks/results/isa_variants.json
"""

from __future__ import annotations

import os
import time

import torch
from common import base_parser, environment, log, median, print_table, set_threads, write_json

LAYER = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
HEAD = {"head": (49152, 576)}


def packed(method_name: str, shapes: dict[str, tuple[int, int]]) -> tuple:
    from ember.kernels.linear import get_linear_method

    method = get_linear_method(method_name)
    torch.manual_seed(0)
    params = [method.pack(torch.randn(n, k) * 0.05, None, torch.float32) for n, k in shapes.values()]
    weights = [method.native_weight(p, with_bias=False) for p in params]
    assert all(w is not None for w in weights), f"{method_name}: no C kernel here"
    return method, params, weights


def main() -> None:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="int4,int8")
    p.add_argument("--variants", default=None, help="default: every variant this CPU runs")
    p.add_argument("--rows", default="1,32,512")
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    threads = set_threads(args.threads)
    from ember.kernels import native

    variants = args.variants.split(",") if args.variants else native.supported_variants()
    load_before = os.getloadavg()
    results = []
    for method_name in args.methods.split(","):
        for part, shapes in (("layer", LAYER), ("head", HEAD)):
            if method_name != "int8" and part == "head":
                continue  # a quantized body keeps the int8 head
            method, params, weights = packed(method_name, shapes)
            ops_per_row = 2 * sum(n * k for n, k in shapes.values())
            for rows in (int(r) for r in args.rows.split(",")):
                xs = [torch.randn(rows, k) for _, k in shapes.values()]
                times: dict[str, list[float]] = {v: [] for v in variants}
                for r in range(args.repeats + 1):
                    for v in variants:
                        os.environ["EMBER_CPU_VARIANT"] = v
                        t0 = time.perf_counter()
                        for x, w in zip(xs, weights):
                            native.linear(x, w)
                        if r:  # the first round builds and warms up
                            times[v].append(time.perf_counter() - t0)
                row = {"method": method_name, "part": part, "rows": rows}
                base = median(times[variants[0]])
                for v in variants:
                    t = median(times[v])
                    row[f"{v} ms"] = round(t * 1e3, 3)
                    row[f"{v} GOP/s"] = round(ops_per_row * rows / t / 1e9, 1)
                    row[f"{v} x {variants[0]}"] = round(base / t, 2)
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
