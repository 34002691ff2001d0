"""Scoring step models end to end: simulate the runs the profiles came from and compare.

A step model's held-out step error does not say how well it reproduces a run (a few percent of
bias on one kind of step compounds through the queues: benchmarks/README.md). Given the
`ember bench throughput` / `ember bench serve` reports of the profiled runs, each candidate model
simulates every run of every report (same workload, seed and rate) and is scored by the mean
absolute relative error of its mean TTFT, mean TPOT and output throughput against the measured.
"""

from __future__ import annotations

import math

from ember.bench.metrics import compute_metrics
from ember.bench.workloads import WorkloadSpec
from ember.sim.simulator import Simulator
from ember.sim.workload import bench_sessions

FIGURES = (("ttft_ms", "mean"), ("tpot_ms", "mean"), ("output_throughput", None))


def replay_runs(reports: list[dict]) -> list[tuple[WorkloadSpec, float, dict]]:
    """(workload, request rate, measured metrics) of every run of the reports (offline runs: rate inf)."""
    out = []
    for report in reports:
        if report.get("kind") not in ("throughput", "serve") or not isinstance(report.get("workload"), dict):
            raise ValueError("--replay takes `ember bench throughput` or `ember bench serve` reports (with a workload)")
        names = set(WorkloadSpec.__dataclass_fields__)
        spec = WorkloadSpec(**{k: v for k, v in report["workload"].items() if k in names})
        for run in report["runs"]:
            out.append((spec, float(run.get("request_rate", math.inf)), run["metrics"]))
    return out


def figure(metrics: dict, key: str, stat: str | None) -> float:
    return float(metrics[key][stat] if stat else metrics[key])


def replay_error(step_seconds, config, capacity, runs) -> tuple[float, list[dict]]:
    """Mean absolute relative error (%) over every figure of every run, and the ratios per run."""
    errors, ratios = [], []
    for spec, rate, measured in runs:
        sim = Simulator(config, capacity, step_seconds, bench_sessions(spec, rate))
        results, duration, _ = sim.run()
        simulated = compute_metrics(results, duration)
        row = {"workload": spec.name, "request_rate": rate}
        for key, stat in FIGURES:
            m = figure(measured, key, stat)
            if m > 0:
                row[key] = figure(simulated, key, stat) / m
                errors.append(abs(row[key] - 1.0))
        ratios.append(row)
    return (100.0 * sum(errors) / len(errors) if errors else math.inf), ratios
