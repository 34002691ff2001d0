"""The chunked-prefill frontier (Sarathi-Serve), simulated (issue 20): the step token budget
(`--max-num-batched-tokens`, the prefill chunk) trades time to first token against the gaps
between tokens of the requests decoding beside the prompts. Against it, layered prefill
(`--layered-prefill G`: whole prompts split by layer groups instead of by tokens) at several G.

The step model must extrapolate to chunks the profile never held (it was taken at 512), so this
uses a linear kind (a tree predicts the largest step it saw for any larger one).

    python benchmarks/sim_chunks.py --out benchmarks/results/sim/chunks.json --plot benchmarks/results/sim/chunks.png
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from common import write_json  # noqa: E402
from ember.bench.metrics import compute_metrics  # noqa: E402
from ember.bench.workloads import WorkloadSpec  # noqa: E402
from ember.sim.calibrate import load_model_json  # noqa: E402
from ember.sim.runner import engine_config, replica_capacity, step_seconds  # noqa: E402
from ember.sim.simulator import Simulator  # noqa: E402
from ember.sim.workload import bench_sessions  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-json", default=os.path.join(ROOT, "benchmarks", "results", "sim", "model_split_linear.json"))
    p.add_argument("--chunks", default="32,64,128,256,512,1024,2048")
    p.add_argument("--layer-groups", default="2,3,5,10,30", help="layered prefill: layer groups (30 layers)")
    p.add_argument("--rate", type=float, default=0.9, help="requests per second on one replica")
    p.add_argument("--num-prompts", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--plot", default=None)
    args = p.parse_args()
    model = load_model_json(args.model_json)
    spec = WorkloadSpec(name="chat-like", num_prompts=args.num_prompts, max_input_len=1024, max_output_len=64,
                        seed=args.seed)
    points, layered = [], []
    runs = [(points, "chunk", int(c), 1) for c in args.chunks.split(",")] + \
           [(layered, "layer_groups", int(g), int(g)) for g in args.layer_groups.split(",") if g.strip()]
    for into, key, value, groups in runs:
        chunk = value if key == "chunk" else 2048  # layered: whole prompts in one schedule
        config = engine_config(model, {"max_num_batched_tokens": chunk})
        results, duration, _ = Simulator(config, replica_capacity(config), step_seconds(model),
                                         bench_sessions(spec, args.rate), layer_groups=groups).run()
        m = compute_metrics(results, duration)
        into.append({key: value, "ttft_mean_ms": m["ttft_ms"]["mean"], "ttft_p90_ms": m["ttft_ms"]["p90"],
                     "itl_p99_ms": m["itl_ms"]["p99"], "itl_max_ms": m["itl_ms"]["max"],
                     "tpot_mean_ms": m["tpot_ms"]["mean"], "output_throughput": m["output_throughput"]})
        pt = into[-1]
        print(f"{key} {value:>5}: TTFT mean {pt['ttft_mean_ms']:8.0f} ms, p90 {pt['ttft_p90_ms']:8.0f} ms; "
              f"ITL p99 {pt['itl_p99_ms']:6.0f} ms, max {pt['itl_max_ms']:6.0f} ms; TPOT mean {pt['tpot_mean_ms']:5.0f} ms")
    write_json(args.out, {"model_json": os.path.relpath(args.model_json, ROOT), "step_model": model["kind"],
                          "rate": args.rate, "workload": dataclasses.asdict(spec), "points": points,
                          "layered": layered})
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4.5))
        for pts, key, label in ((points, "chunk", "chunked (token budget)"), (layered, "layer_groups", "layered (groups)")):
            if not pts:
                continue
            ax.plot([pt["itl_p99_ms"] for pt in pts], [pt["ttft_p90_ms"] for pt in pts], marker="o", label=label)
            for pt in pts:
                ax.annotate(str(pt[key]), (pt["itl_p99_ms"], pt["ttft_p90_ms"]), textcoords="offset points", xytext=(4, 4))
        ax.legend()
        ax.set(xlabel="p99 gap between tokens (ms)", ylabel="p90 time to first token (ms)", yscale="log",
               title=f"chunked vs layered prefill at {args.rate:g} req/s, simulated")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
