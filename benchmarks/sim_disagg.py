"""Co-located against disaggregated prefill/decode (Splitwise, DistServe) and semi-disaggregated
(semi-PD: a prefill and a decode worker on every machine, splitting its compute), simulated with
a step model calibrated on this machine (issue 20): for the same number of machines, which
layout serves the most requests per second within TTFT and TPOT SLOs?

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
from ember.sim.commands import parse_scaling  # noqa: E402
from ember.sim.simulator import Disaggregation  # noqa: E402
from sim_sweep import add_sweep_args, plot_sweeps, print_sweep, sweep, sweep_setup  # noqa: E402


def layouts(machines: int, shares: list[float]) -> list[tuple[str, int, float | None]]:
    """(name, prefill replicas, semi-PD share): co-located, every split with at least one of
    each, then semi-PD at each prefill share."""
    return [(f"co-located x{machines}", 0, None)] + [(f"{p}P+{machines - p}D", p, None) for p in range(1, machines)] \
        + [(f"semi-PD {s:g} x{machines}", machines, s) for s in shares]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--machines", type=int, default=4)
    p.add_argument("--link-gbps", type=float, default=25.0)
    p.add_argument("--semi-pd-shares", default="0.25,0.5,0.75", help="prefill shares of the semi-PD layouts")
    p.add_argument("--semi-pd-scaling", default="prefill=1,decode=1",
                   help="how a worker's step grows on a share of a machine (ember sim run --semi-pd-scaling)")
    add_sweep_args(p, rates="1,1.5,2,2.25,2.5,2.75,3,3.25,3.5,4")
    args = p.parse_args()
    model, config, capacity, spec, slos, rates = sweep_setup(args)
    results = {}
    shares = [float(x) for x in args.semi_pd_shares.split(",") if x.strip()]
    scaling = parse_scaling(args.semi_pd_scaling)
    for name, prefill, share in layouts(args.machines, shares):
        disagg = Disaggregation(prefill, args.link_gbps * 1e9 / 8, prefill_share=share, scaling=scaling) if prefill else None
        decode = args.machines if share is not None else args.machines - prefill
        results[name] = sweep(config, capacity, model, spec, rates, slos, decode, args.machines, disagg=disagg)
        results[name]["prefill_replicas"] = prefill
        results[name]["semi_pd_share"] = share
        print_sweep(name, results[name])
    write_json(args.out, {"model_json": os.path.relpath(args.model_json, ROOT), "step_model": model["kind"],
                          "engine": {k: config.__dict__[k] for k in ("threads", "max_num_seqs", "max_num_batched_tokens",
                                                                      "kv_cache_tokens")},
                          "workload": spec.__dict__, "slos_ms": slos, "link_gbps": args.link_gbps,
                          "semi_pd_scaling": scaling,
                          "machines": args.machines, "layouts": results})
    if args.plot:
        plot_sweeps(results, slos, "co-located vs disaggregated vs semi-PD, same machines (simulated)", args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
