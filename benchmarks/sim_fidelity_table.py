"""One markdown table from sim_fidelity.py's JSON files: per configuration, the measured means
and the simulated / measured ratios of the issue's five figures, and how many lie within 10%.

    python benchmarks/sim_fidelity_table.py benchmarks/results/sim/fidelity_suite_*.json
"""

from __future__ import annotations

import json
import sys

FIGURES = ("ttft_mean_ms", "ttft_p90_ms", "tpot_mean_ms", "tpot_p90_ms", "output_throughput")
WITHIN = 0.10


def label(run: dict, row: dict) -> str:
    words = run["workload"].split()
    workload = words[words.index("--workload") + 1] if "--workload" in words else "chat-like"
    engine = run["engine"].split()
    linear = engine[engine.index("--linear") + 1] if "--linear" in engine else "int4 (auto)"
    policy = f", {run['sched_args']}" if run.get("sched_args") else ""
    return f"{workload}, {row['request_rate']:g} req/s, {linear}{policy}"


def main(paths: list[str]) -> int:
    if not paths:
        raise SystemExit("usage: sim_fidelity_table.py FIDELITY.json [...]")
    print("| configuration | in sample | measured TTFT mean ms | TPOT mean ms | output tok/s | "
          "sim/meas TTFT mean | TTFT p90 | TPOT mean | TPOT p90 | tok/s | within 10% |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    hits = total = 0
    for path in paths:
        run = json.load(open(path))
        for row in run["table"]:
            ratios = [row["ratio"][f] for f in FIGURES]
            ok = sum(abs(r - 1.0) <= WITHIN for r in ratios)
            hits, total = hits + ok, total + len(ratios)
            m = row["measured"]
            print(f"| {label(run, row)} | {'yes' if row['in_sample'] else 'no'} | {m['ttft_mean_ms']:.0f} | "
                  f"{m['tpot_mean_ms']:.1f} | {m['output_throughput']:.1f} | "
                  + " | ".join(f"{r:.2f}" for r in ratios) + f" | {ok}/{len(ratios)} |")
    print(f"\n{hits} of {total} figures within {WITHIN:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
