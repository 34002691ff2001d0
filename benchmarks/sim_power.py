"""More servers under one power budget, each capped (POLCA), simulated with a step model
calibrated on this machine (issue 20): does capping N+k servers to the budget serve more
requests within the SLOs than N uncapped servers provisioned for their peak?

The budget is --base-machines x the prefill power (servers provisioned for their peak); a layout
of M machines caps each at budget / M. The watts per state and how a capped phase slows
(ember/sim/power.py) are inputs, not measurements: this machine has no power counters. The
defaults are assumptions shaped like an accelerator server's (prefill near peak, decode lower,
decode less sensitive to frequency); replace them with measured figures.

    python benchmarks/sim_power.py --out benchmarks/results/sim/power.json --plot benchmarks/results/sim/power.png
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from common import write_json  # noqa: E402
from ember.sim.power import parse_power  # noqa: E402
from sim_sweep import add_sweep_args, plot_sweeps, print_sweep, sweep, sweep_setup  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--power", default="idle=100,prefill=400,decode=300", help="watts per state (assumed)")
    p.add_argument("--cap-sensitivity", default="prefill=1,decode=0.5")
    p.add_argument("--base-machines", type=int, default=4, help="uncapped machines the budget provisions")
    p.add_argument("--extra", default="1,2,3", help="machines added under the same budget, capped")
    add_sweep_args(p, rates="2,2.5,3,3.5,4,4.5,5,5.5,6")
    args = p.parse_args()
    model, config, capacity, spec, slos, rates = sweep_setup(args)
    peak = parse_power(args.power, 0.0, args.cap_sensitivity)
    budget = args.base_machines * peak.prefill_w
    results = {}
    for extra in [0] + [int(x) for x in args.extra.split(",")]:
        machines = args.base_machines + extra
        cap = budget / machines if extra else 0.0
        power = parse_power(args.power, cap, args.cap_sensitivity)
        name = f"{machines} x {cap:.0f} W cap" if extra else f"{machines} uncapped"
        results[name] = sweep(config, capacity, model, spec, rates, slos, machines, machines, power=power)
        results[name]["cap_w"] = cap
        print_sweep(name, results[name])
    write_json(args.out, {"model_json": os.path.relpath(args.model_json, ROOT), "step_model": model["kind"],
                          "power": args.power, "cap_sensitivity": args.cap_sensitivity, "budget_w": budget,
                          "workload": spec.__dict__, "slos_ms": slos, "layouts": results})
    if args.plot:
        plot_sweeps(results, slos, f"{budget:.0f} W for the cluster: more servers, each capped (simulated)", args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
