"""PNG charts (matplotlib, no display): latency CDFs, and throughput / p99 TTFT against the swept
request rate or concurrency. Every chart draws one line per run, so runs of different servers
(`ember bench compare a.json b.json --plot DIR`) share the axes."""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

from ember.bench.metrics import RequestResult  # noqa: E402
from ember.bench.report import run_name  # noqa: E402

CDFS = (("ttft", "TTFT (ms)"), ("itl", "inter-token latency (ms)"), ("e2el", "end-to-end latency (ms)"))


def _latencies(run: dict, which: str) -> list[float]:
    out = []
    for d in run.get("requests", []):
        r = RequestResult.from_json(d)
        if r.success:
            out.extend(g * 1000.0 for g in r.itl) if which == "itl" else out.append(getattr(r, which) * 1000.0)
    return sorted(out)


def plot_cdfs(reports: list[dict], folder: str) -> list[str]:
    paths = []
    for which, xlabel in CDFS:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        drawn, lo, hi = 0, math.inf, 0.0
        for rep in reports:
            for run in rep["runs"]:
                xs = _latencies(run, which)
                if xs:
                    ys = [0.0] + [(i + 1) / len(xs) for i in range(len(xs))]
                    ax.plot([xs[0]] + xs, ys, label=run_name(rep, run), drawstyle="steps-post")
                    drawn += 1
                    lo, hi = min(lo, xs[0]), max(hi, xs[-1])
        if drawn:
            if lo > 0 and hi / lo > 100:  # heavy tails: a log axis keeps the body of the curve readable
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("fraction of requests" if which != "itl" else "fraction of gaps")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            paths.append(_save(fig, folder, f"cdf_{which}.png"))
        plt.close(fig)
    return paths


def _sweep_axis(runs: list[dict]) -> str | None:
    """The field that varies between a report's runs: request_rate or max_concurrency."""
    for key in ("request_rate", "max_concurrency"):
        if len({str(r.get(key)) for r in runs}) > 1:
            return key
    return None


def plot_sweeps(reports: list[dict], folder: str) -> list[str]:
    """Throughput and p99 TTFT against the swept quantity, when some report holds a sweep."""
    swept = [(rep, _sweep_axis(rep["runs"])) for rep in reports if rep.get("kind") == "serve"]
    swept = [(rep, key) for rep, key in swept if key]
    if not swept:
        return []
    key = swept[0][1]
    finite = [float(r[key]) for rep, k in swept if k == key for r in rep["runs"] if r.get(key) not in (None, math.inf)]
    inf_at = 2 * max(finite) if finite else 1.0  # rate=inf drawn to the right of the largest finite rate
    paths = []
    for metric, ylabel, fname in (("output_throughput", "output tokens / s", "throughput_vs_"),
                                  ("request_throughput", "requests / s", "request_throughput_vs_"),
                                  ("p99_ttft", "p99 TTFT (ms)", "p99_ttft_vs_")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for rep, k in swept:
            if k != key:
                continue
            pts = []
            for run in rep["runs"]:
                x = run.get(key)
                x = inf_at if x == math.inf else float(x)
                y = run["metrics"]["ttft_ms"]["p99"] if metric == "p99_ttft" else run["metrics"][metric]
                pts.append((x, y))
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=rep.get("label") or "run")
        ticks = sorted({x for rep, k in swept if k == key for x in
                        (inf_at if r.get(key) == math.inf else float(r[key]) for r in rep["runs"])})
        ax.set_xticks(ticks, ["inf" if x == inf_at and math.inf in [r.get(key) for rep, _ in swept for r in rep["runs"]]
                              else f"{x:g}" for x in ticks])
        ax.set_xlabel("request rate (req/s)" if key == "request_rate" else "max concurrency")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save(fig, folder, fname + ("rate.png" if key == "request_rate" else "concurrency.png")))
        plt.close(fig)
    return paths


def plot_reports(reports: list[dict], folder: str) -> list[str]:
    """Every chart that the reports hold data for; returns the PNG paths written."""
    return plot_cdfs(reports, folder) + plot_sweeps(reports, folder)


def _save(fig, folder: str, name: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
