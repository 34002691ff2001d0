"""Reports: results as JSON files, and terminal tables (rich) of one or several runs."""

from __future__ import annotations

import datetime
import json
import math
import os

from ember.json_file import read_json

SCHEMA = 1
LATENCIES = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2el_ms", "E2EL"))
STATS = ("mean", "median", "p90", "p99", "max")


def new_report(kind: str, label: str, **info) -> dict:
    return {"ember_bench": SCHEMA, "kind": kind, "label": label,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **info, "runs": []}


def _jsonable(x):
    if isinstance(x, float) and math.isinf(x):
        return "inf"  # JSON has no infinity; read back by load_report
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def save_report(report: dict, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_jsonable(report), f, indent=1)
        f.write("\n")


def load_report(path: str) -> dict:
    """A report written by save_report; a clear ValueError for anything else."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("ember_bench") != SCHEMA or not isinstance(data.get("runs"), list):
        raise ValueError(f"{path} is not an `ember bench` report (schema {SCHEMA})")
    for run in data["runs"]:
        for key in ("request_rate",):
            if run.get(key) == "inf":
                run[key] = math.inf
    return data


def run_name(report: dict, run: dict) -> str:
    """'ember rate=4' / 'llamacpp conc=8': the file's label plus what varies between its runs."""
    parts = [report.get("label") or report.get("kind", "run")]
    if report.get("kind") == "serve":
        rate = run.get("request_rate")
        parts.append(f"rate={'inf' if rate in (math.inf, 'inf') else f'{rate:g}'}")
        if run.get("max_concurrency"):
            parts.append(f"conc={run['max_concurrency']}")
    elif "batch_size" in run:
        parts.append(f"bs={run['batch_size']}")
    return " ".join(parts)


def _fmt(v) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def serve_rows(metrics: dict) -> list[tuple[str, float]]:
    rows = [("completed", metrics["completed"]), ("failed", metrics["failed"]),
            ("duration (s)", metrics["duration_s"]), ("input tokens", metrics["total_input_tokens"]),
            ("output tokens", metrics["total_output_tokens"]), ("request throughput (req/s)", metrics["request_throughput"]),
            ("output throughput (tok/s)", metrics["output_throughput"]),
            ("total token throughput (tok/s)", metrics["total_token_throughput"])]
    if "goodput" in metrics:
        g = metrics["goodput"]
        slos = " ".join(f"{k}<={v:g}ms" for k, v in g["slos_ms"].items())
        rows.append((f"goodput (req/s, {slos})", g["request_goodput"]))
    for key, name in LATENCIES:
        if key not in metrics:  # offline runs have no per-token gaps
            continue
        for stat in STATS:
            rows.append((f"{name} {stat} (ms)", metrics[key][stat]))
    if "jobs" in metrics:
        rows += [("jobs completed", metrics["jobs"]["completed"]),
                 ("job completion time mean (s)", metrics["jobs"]["jct_s"]["mean"]),
                 ("job completion time p99 (s)", metrics["jobs"]["jct_s"]["p99"])]
    if "fairness" in metrics:
        f = metrics["fairness"]
        rows.append(("max service gap, both backlogged", f["max_gap"]))
        if f.get("jain") is not None:
            rows.append(("Jain's index, all backlogged", f["jain"]))
    if (metrics.get("energy") or {}).get("joules_per_output_token") is not None:
        rows.append(("energy (J / output token)", metrics["energy"]["joules_per_output_token"]))
    return rows


def print_table(columns: list[tuple[str, list[tuple[str, float]]]], title: str, console=None,
                ratio: bool = False) -> None:
    """One column per run (rows named by the first column); `ratio` adds last / first."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for name, _ in columns:
        table.add_column(name, justify="right")
    ratio = ratio and len(columns) >= 2
    if ratio:
        table.add_column(f"{columns[-1][0]} / {columns[0][0]}", justify="right")
    if columns:
        values = [dict(rows) for _, rows in columns]
        for k, _ in columns[0][1]:
            cells = [_fmt(v[k]) if k in v else "-" for v in values]
            if ratio:
                a, b = values[0].get(k), values[-1].get(k)
                cells.append(f"{b / a:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else "-")
            table.add_row(k, *cells)
    # wide enough for every column even when stdout is not a terminal (rich would assume 80)
    (console or Console(width=max(100, 34 + 16 * (len(columns) + ratio)))).print(table)


def report_columns(reports: list[dict]) -> list[tuple[str, list[tuple[str, float]]]]:
    columns = []
    for rep in reports:
        for run in rep["runs"]:
            rows = serve_rows(run["metrics"]) if rep["kind"] in ("serve", "throughput") else \
                [(k, v) for k, v in run["metrics"].items() if isinstance(v, (int, float))]
            columns.append((run_name(rep, run), rows))
    return columns


def print_reports(reports: list[dict], console=None) -> None:
    """The table of every run of every report; for two reports of one run each, their ratio too."""
    columns = report_columns(reports)
    title = " vs ".join(dict.fromkeys(r.get("label") or r["kind"] for r in reports))
    print_table(columns, title, console, ratio=len(columns) == 2 and len(reports) == 2)


def energy_line(energy: dict) -> str:
    if not energy or not energy.get("available"):
        return f"energy: not available ({(energy or {}).get('reason', 'no energy counters found')})"
    per_token = energy.get("joules_per_output_token")
    tail = f" ({per_token:.4f} J per output token)" if per_token is not None else ""
    return f"energy: {energy['joules']:.1f} J from {energy['source']}{tail}"
