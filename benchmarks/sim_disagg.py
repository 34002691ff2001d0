"""Co-located against disaggregated prefill/decode (Splitwise, DistServe), simulated with a step
model calibrated on this machine (issue 20): for the same number of machines, which split serves
the most requests per second within TTFT and TPOT SLOs?

Every layout runs the same seeded workload at each rate through `ember sim`; a request is good
when it meets both SLOs. Reported per layout and rate: SLO attainment, goodput per machine, p90
TTFT and TPOT; and per layout the highest rate with >= 90% attainment (DistServe's figure).

    python benchmarks/sim_disagg.py --out benchmarks/results/sim/disagg.json --plot benchmarks/results/sim/disagg.png
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from common import write_json  # noqa: E402
from ember.bench.workloads import WorkloadSpec  # noqa: E402
from ember.sim.calibrate import load_model_json  # noqa: E402
from ember.sim.runner import engine_config, replica_capacity  # noqa: E402
from ember.sim.simulator import Disaggregation  # noqa: E402
from sim_sweep import plot_sweeps, print_sweep, sweep  # noqa: E402


def layouts(machines: int) -> list[tuple[str, int]]:
    """(name, prefill replicas): co-located, then every split with at least one of each."""
    return [(f"co-located x{machines}", 0)] + [(f"{p}P+{machines - p}D", p) for p in range(1, machines)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-json", default=os.path.join(ROOT, "benchmarks", "results", "sim", "model.json"))
    p.add_argument("--machines", type=int, default=4)
    p.add_argument("--rates", default="1,1.5,2,2.25,2.5,2.75,3,3.25,3.5,4")
    p.add_argument("--num-prompts", type=int, default=400)
    p.add_argument("--slo-ttft-ms", type=float, default=3000.0)
    p.add_argument("--slo-tpot-ms", type=float, default=150.0)
    p.add_argument("--link-gbps", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--plot", default=None)
    args = p.parse_args()
    model = load_model_json(args.model_json)
    config = engine_config(model, {})
    capacity = replica_capacity(config)
    spec = WorkloadSpec(name="chat-like", num_prompts=args.num_prompts, max_input_len=512, max_output_len=64,
                        seed=args.seed)
    slos = {"ttft": args.slo_ttft_ms, "tpot": args.slo_tpot_ms}
    rates = [float(r) for r in args.rates.split(",")]
    results = {}
    for name, prefill in layouts(args.machines):
        disagg = Disaggregation(prefill, args.link_gbps * 1e9 / 8) if prefill else None
        results[name] = sweep(config, capacity, model, spec, rates, slos, args.machines - prefill, args.machines,
                              disagg=disagg)
        results[name]["prefill_replicas"] = prefill
        print_sweep(name, results[name])
    write_json(args.out, {"model_json": os.path.relpath(args.model_json, ROOT), "step_model": model["kind"],
                          "engine": {k: config.__dict__[k] for k in ("threads", "max_num_seqs", "max_num_batched_tokens",
                                                                      "kv_cache_tokens")},
                          "workload": spec.__dict__, "slos_ms": slos, "link_gbps": args.link_gbps,
                          "machines": args.machines, "layouts": results})
    if args.plot:
        plot_sweeps(results, slos, "co-located vs disaggregated prefill/decode, same machines (simulated)", args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
