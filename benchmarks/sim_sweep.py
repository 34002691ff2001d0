"""Shared by the simulated scenario scripts (sim_disagg.py, sim_power.py): one layout of
simulated machines over a sweep of request rates, and a chart of several layouts."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ember.bench.metrics import compute_metrics  # noqa: E402
from ember.bench.workloads import WorkloadSpec  # noqa: E402
from ember.sim.calibrate import load_model_json  # noqa: E402
from ember.sim.power import energy_report  # noqa: E402
from ember.sim.runner import engine_config, replica_capacity, step_seconds  # noqa: E402
from ember.sim.simulator import Simulator  # noqa: E402
from ember.sim.workload import bench_sessions  # noqa: E402

ATTAINMENT = 0.9  # DistServe's figure: the highest rate at which 90% of requests meet every SLO


def add_sweep_args(p, rates: str) -> None:
    """The options every rate-sweep scenario takes: the step model, the rates, the chat-like
    workload's size and seed, the SLOs, and where results go."""
    p.add_argument("--model-json", default=os.path.join(ROOT, "benchmarks", "results", "sim", "model.json"))
    p.add_argument("--rates", default=rates)
    p.add_argument("--num-prompts", type=int, default=400)
    p.add_argument("--slo-ttft-ms", type=float, default=3000.0)
    p.add_argument("--slo-tpot-ms", type=float, default=150.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--plot", default=None)


def sweep_setup(args):
    """(step model, engine config, one replica's capacity, workload, SLOs, rates) from add_sweep_args' options."""
    model = load_model_json(args.model_json)
    config = engine_config(model, {})
    spec = WorkloadSpec(name="chat-like", num_prompts=args.num_prompts, max_input_len=512, max_output_len=64,
                        seed=args.seed)
    slos = {"ttft": args.slo_ttft_ms, "tpot": args.slo_tpot_ms}
    return model, config, replica_capacity(config), spec, slos, [float(r) for r in args.rates.split(",")]


def sweep(config, capacity, model: dict, spec, rates: list[float], slos: dict, replicas: int, machines: int,
          **sim_kwargs) -> dict:
    """Each rate simulated: attainment, goodput per machine, p90 TTFT / TPOT, p99 ITL, energy."""
    points = []
    for rate in rates:
        sim = Simulator(config, capacity, step_seconds(model), bench_sessions(spec, rate), replicas, "least-loaded",
                        **sim_kwargs)
        runs, duration, _ = sim.run()
        m = compute_metrics(runs, duration, slos)
        point = {"rate": rate, "attainment": m["goodput"]["good_requests"] / len(runs),
                 "goodput_per_machine": m["goodput"]["request_goodput"] / machines,
                 "ttft_p90_ms": m["ttft_ms"]["p90"], "tpot_p90_ms": m["tpot_ms"]["p90"],
                 "itl_p99_ms": m["itl_ms"]["p99"], "output_throughput": m["output_throughput"]}
        if sim_kwargs.get("power") is not None:
            e = energy_report(sim.replicas + sim.prefill_pool, duration, m["total_output_tokens"], sim_kwargs["power"])
            point["joules_per_output_token"] = e["joules_per_output_token"]
        points.append(point)
    ok = [pt["rate"] for pt in points if pt["attainment"] >= ATTAINMENT]
    return {"points": points, "max_rate_90pct": max(ok) if ok else 0.0, "machines": machines}


def print_sweep(name: str, result: dict) -> None:
    best = result["max_rate_90pct"]
    print(f"{name:>18}: highest rate with >= {ATTAINMENT:.0%} within SLOs {best:g} req/s "
          f"({best / result['machines']:.3f} per machine)")
    for pt in result["points"]:
        energy = f", {pt['joules_per_output_token']:.2f} J/token" if "joules_per_output_token" in pt else ""
        print(f"{'':>20}rate {pt['rate']:>4g}: {pt['attainment']:6.1%} good, p90 TTFT {pt['ttft_p90_ms']:8.0f} ms, "
              f"p90 TPOT {pt['tpot_p90_ms']:6.1f} ms, p99 ITL {pt['itl_p99_ms']:7.0f} ms{energy}")


def plot_sweeps(results: dict, slos: dict, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, r in results.items():
        rates = [pt["rate"] for pt in r["points"]]
        axes[0].plot(rates, [pt["attainment"] * 100 for pt in r["points"]], marker="o", label=name)
        axes[1].plot(rates, [pt["ttft_p90_ms"] for pt in r["points"]], marker="o", label=name)
        axes[2].plot(rates, [pt["tpot_p90_ms"] for pt in r["points"]], marker="o", label=name)
    axes[0].axhline(ATTAINMENT * 100, color="grey", linewidth=0.8, linestyle="--")
    axes[1].axhline(slos["ttft"], color="grey", linewidth=0.8, linestyle="--")
    axes[2].axhline(slos["tpot"], color="grey", linewidth=0.8, linestyle="--")
    axes[0].set(xlabel="request rate (req/s)", ylabel="requests within both SLOs (%)")
    axes[1].set(xlabel="request rate (req/s)", ylabel="p90 TTFT (ms)", yscale="log")
    axes[2].set(xlabel="request rate (req/s)", ylabel="p90 TPOT (ms)")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
