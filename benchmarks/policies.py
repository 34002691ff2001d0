"""Scheduling policies against FCFS, each behind a live `ember serve`, measured by `ember bench serve`.

Every policy of a scenario runs the same seeded workload against a fresh server (same model,
flags and threads), one after the other, so the figures compare policies, not machines:

- fairness: two clients, `a` sending 3x as many requests as `b`, all at once (overload); FCFS,
  VTC and weighted VTC (b weighs 3). Service per client over time (plot), the largest service
  gap while both are backlogged against VTC's bound, Jain's index while both are backlogged.
- fairness-lengths: both clients send as many requests, b's four times as long (256 + 128
  tokens against 64 + 32): FCFS serves them equal requests, so b gets 4x the service.
- fairness-onoff: VTC's on/off client: `a` sends steadily above capacity, `b` only in 10 s
  on periods out of every 20 (same lengths). FCFS and VTC: when `b` comes back, FCFS puts it
  behind `a`'s backlog; VTC lifts its counter and serves it at once.
- admission: a memory-bound load (few KV tokens, max_tokens far above the outputs the model
  ends by itself): FCFS (aggressive), conservative and past-future admission. Goodput,
  preemptions, throughput.
- lpm: the shared-prefix workload with a KV cache too small for every prefix at once:
  FCFS against longest-prefix-match. TTFT and the prefix-cache hit rate.
- slo: goodput at rising request rates for FCFS and earliest-deadline-first with deferral.
- continuum: agent programs whose turns end in tool calls (pauses of 0.3-5 s), with more
  programs in flight than the KV cache holds: FCFS with the prefix cache's LRU against
  continuum's pinning. Job completion time and the prefix-cache hit rate.
- fastswitch: priority churn (three priority levels drawn per request, `--policy priority`,
  a KV cache that holds a few of the requests): every arrival of higher priority preempts a
  running request of lower priority. Recompute, swap and FastSwitch preemption. TTFT and
  inter-token latency, their p99 overall and TTFT per priority level.

  .venv/bin/python benchmarks/policies.py --scenarios fairness,admission,lpm,slo,continuum \\
      --out benchmarks/results/policies.json --plot benchmarks/results/policies.png
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from ember.bench.fairness import fairness, service_events  # noqa: E402
from ember.bench.metrics import RequestResult  # noqa: E402
from ember.bench.report import load_report  # noqa: E402
from ember.bench.workloads import session_priorities  # noqa: E402
from common import environment, write_json  # noqa: E402
from servers import free_port, stop, wait_ready  # noqa: E402

EMBER = os.path.join(ROOT, ".venv", "bin", "ember")

# scenario -> (runs as (label, extra server flags), server flags for all, bench flags, goodput SLOs)
SCENARIOS = {
    "fairness": ([("fcfs", "--policy fcfs"), ("vtc", "--policy vtc"), ("vtc-weighted", "--policy vtc --client-weights {weights}")],
                 "--max-num-seqs 8",
                 "--workload multi-tenant --tenants a:3:64:32,b:1:64:32 --num-prompts 160 --request-rate inf "
                 "--ignore-eos", ""),
    "fairness-lengths": ([("fcfs", "--policy fcfs"), ("vtc", "--policy vtc")],
                         "--max-num-seqs 8",
                         "--workload multi-tenant --tenants a:1:64:32,b:1:256:128 --num-prompts 80 --request-rate inf "
                         "--ignore-eos", ""),
    "fairness-onoff": ([("fcfs", "--policy fcfs"), ("vtc", "--policy vtc")],
                       "--max-num-seqs 8",
                       "--workload multi-tenant --tenants a:1:64:32,b:1:64:32:10/10 --num-prompts 320 "
                       "--request-rate 8 --ignore-eos", ""),
    "admission": ([("fcfs", "--policy fcfs"), ("conservative", "--policy conservative"),
                   ("past-future", "--policy past-future")],
                  "--max-num-seqs 32 --kv-cache-tokens 1536",
                  "--workload random --input-len 64 --range-ratio 0.5 --output-len 192 --num-prompts 40 "
                  "--request-rate 2 --endpoint chat", "ttft:5000 tpot:250"),
    "lpm": ([("fcfs", "--policy fcfs"), ("lpm", "--policy lpm")],
            "--max-num-seqs 8 --kv-cache-tokens 1024",
            "--workload shared-prefix --num-prefixes 6 --prefix-len 192 --input-len 16 --output-len 8 "
            "--num-prompts 96 --request-rate inf --ignore-eos", ""),
    "slo": ([("fcfs", "--policy fcfs"), ("slo", "--policy slo --slo-ttft-ms 2000 --slo-tpot-ms 200")],
            "--max-num-seqs 16",
            "--workload random --input-len 128 --range-ratio 0.5 --output-len 32 --num-prompts 80 --ignore-eos "
            "--sweep-rate 2,4,8", "ttft:2000 tpot:200"),
    "fastswitch": ([("recompute", "--preemption recompute"), ("swap", "--preemption swap"),
                    ("fastswitch", "--preemption fastswitch")],
                   "--policy priority --max-num-seqs 16 --kv-cache-tokens 2048 --max-num-batched-tokens 256",
                   "--workload random --input-len 384 --range-ratio 0.5 --output-len 96 --num-prompts 64 "
                   "--request-rate 3 --priority-levels 3 --ignore-eos", ""),
    "continuum": ([("fcfs", "--policy fcfs"), ("continuum", "--policy continuum")],
                  "--max-num-seqs 16 --kv-cache-tokens 3072",
                  "--workload agent --turns 4 --num-prompts 96 --input-len 64 --output-len 24 --ignore-eos "
                  "--request-rate 2 --endpoint chat", ""),
}
WEIGHTS = {"a": 1.0, "b": 3.0}


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split(":")[1].split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))


def downsample(events: list[tuple[float, float]], points: int = 300) -> list[tuple[float, float]]:
    """A service curve's events merged into at most `points` steps (same total, same shape)."""
    if len(events) <= points:
        return events
    size = -(-len(events) // points)
    return [(events[min(i + size, len(events)) - 1][0], sum(s for _, s in events[i:i + size]))
            for i in range(0, len(events), size)]


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, trust_env=False).text
    out = {}
    for name in ("num_preemptions", "prefix_cache_queries", "prefix_cache_hits"):
        m = re.search(rf"^ember:{name}(?:_total)?(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.MULTILINE)
        out[name] = float(m.group(1)) if m else float("nan")
    return out


def run_policy(args, scenario: str, label: str, policy_flags: str, tmp: str) -> dict:
    runs, common, bench_flags, slos = SCENARIOS[scenario]
    port = free_port()
    weights = os.path.join(tmp, "weights.json")
    serve = [EMBER, "serve", "--host", "127.0.0.1", "--port", str(port), "--threads", str(args.threads),
             *shlex.split(args.server_args), *shlex.split(common), *shlex.split(policy_flags.format(weights=weights))]
    log = os.path.join(tmp, f"{scenario}-{label}.log")
    print(f"[{scenario}/{label}] {' '.join(serve)}", file=sys.stderr)
    with open(log, "wb") as f:
        proc = subprocess.Popen(serve, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/health", log)
        out = os.path.join(tmp, f"{scenario}-{label}.json")
        bench = [EMBER, "bench", "serve", "--base-url", f"http://127.0.0.1:{port}", "--seed", str(args.seed),
                 "--output", out, "--label", label, "--no-progress", *shlex.split(bench_flags)]
        if slos:
            bench += ["--goodput", *slos.split()]
        if subprocess.run(bench, cwd=ROOT).returncode != 0:
            raise SystemExit(f"[{scenario}/{label}] ember bench serve failed; server log: {log}")
        server = scrape(port)
    finally:
        stop(proc)
    report = load_report(out)
    points = []
    for run in report["runs"]:
        m = run["metrics"]
        point = {"request_rate": run["request_rate"], "completed": m["completed"], "failed": m["failed"],
                 "duration_s": m["duration_s"], "output_throughput": m["output_throughput"],
                 "ttft_ms_mean": m["ttft_ms"]["mean"], "ttft_ms_p99": m["ttft_ms"]["p99"],
                 "tpot_ms_mean": m["tpot_ms"]["mean"]}
        if scenario == "fastswitch":
            point["itl_ms_p99"], point["itl_ms_mean"] = m["itl_ms"]["p99"], m["itl_ms"]["mean"]
            results = [RequestResult.from_json(r) for r in run["requests"]]
            levels = session_priorities(max(r.session for r in results) + 1, 3, args.seed)
            point["ttft_ms_by_priority"] = {
                level: sorted(1000 * r.ttft for r in results if r.success and levels[r.session] == level)
                for level in range(3)}
            point["ttft_ms_by_priority"] = {k: {"mean": sum(v) / len(v), "p99": v[min(len(v) - 1, int(0.99 * len(v)))]}
                                            for k, v in point["ttft_ms_by_priority"].items() if v}
        if "jobs" in m:
            point["jct_s_mean"] = m["jobs"]["jct_s"]["mean"]
            point["jct_s_p99"] = m["jobs"]["jct_s"]["p99"]
            point["jobs_completed"] = m["jobs"]["completed"]
        if "goodput" in m:
            point["goodput"] = m["goodput"]["request_goodput"]
            point["good_requests"] = m["goodput"]["good_requests"]
        if scenario.startswith("fairness"):
            results = [RequestResult.from_json(r) for r in run["requests"]]
            w = WEIGHTS if label == "vtc-weighted" else None
            # M of VTC's bound: 8 sequences (--max-num-seqs) of the longest prompt + output of the run
            longest = max(r.prompt_tokens + r.output_tokens for r in results if r.success)
            point["fairness"] = fairness(results, weights=w, batch_tokens=8 * longest)
            point["per_user"] = m.get("per_user")
            point["service_curves"] = {u: downsample(ev) for u, ev in service_events(results, weights=w).items()}
        points.append(point)
    server["prefix_hit_rate"] = server["prefix_cache_hits"] / server["prefix_cache_queries"] \
        if server["prefix_cache_queries"] else 0.0
    return {"label": label, "flags": policy_flags, "server": server, "points": points}


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s, r) for s, r in results.items()]
    count = sum(len(runs) if s.startswith("fairness") else 1 for s, runs in panels)
    cols = min(count, 4)
    rows = -(-count // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.6 * rows), squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[count:]:
        ax.set_visible(False)
    for scenario, runs in panels:
        if scenario.startswith("fairness"):
            for run in runs:
                ax = axes.pop(0)
                curves = run["points"][0]["service_curves"]
                t0 = min(ev[0][0] for ev in curves.values() if ev)
                for user, ev in sorted(curves.items()):
                    total, xs, ys = 0.0, [], []
                    for t, s in ev:
                        total += s
                        xs.append(t - t0)
                        ys.append(total)
                    ax.plot(xs, ys, label=f"client {user}")
                f = run["points"][0]["fairness"]
                ax.set_title(f"{scenario} {run['label']}: gap {f['max_gap']:.0f} (bound {f['vtc_bound']:.0f})",
                             fontsize=9)
                ax.set_xlabel("s")
                ax.set_ylabel("weighted service (1/in, 2/out token)")
                ax.legend(fontsize=8)
            continue
        ax = axes.pop(0)
        if scenario == "slo":
            for run in runs:
                ax.plot([p["request_rate"] for p in run["points"]], [p.get("goodput", 0) for p in run["points"]],
                        marker="o", label=run["label"])
            ax.set_xlabel("request rate (req/s)")
            ax.set_ylabel("goodput (req/s)")
        else:
            key = {"admission": ("goodput", "goodput (req/s)"), "lpm": ("ttft_ms_mean", "TTFT mean (ms)"),
                   "continuum": ("jct_s_mean", "job completion time mean (s)"),
                   "fastswitch": ("ttft_ms_p99", "TTFT p99 (ms)")}[scenario]
            ax.bar([r["label"] for r in runs], [r["points"][0].get(key[0], 0) for r in runs])
            ax.set_ylabel(key[1])
        ax.set_title(scenario, fontsize=9)
        ax.legend(fontsize=8) if scenario == "slo" else None
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--server-args", default="--linear int4", help="more `ember serve` flags for every run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="FILE.json")
    p.add_argument("--plot", default=None, metavar="FILE.png")
    p.add_argument("--replot", default=None, metavar="FILE.json", help="only draw --plot from a saved --out")
    args = p.parse_args()
    if args.replot:
        with open(args.replot) as f:
            plot(json.load(f)["results"], args.plot or os.path.splitext(args.replot)[0] + ".png")
        return 0
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"--scenarios: unknown {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "weights.json"), "w") as f:
            json.dump(WEIGHTS, f)
        for scenario in scenarios:
            results[scenario] = [run_policy(args, scenario, label, flags, tmp) for label, flags in SCENARIOS[scenario][0]]
            for run in results[scenario]:
                for pt in run["points"]:
                    brief = {k: v for k, v in pt.items() if k not in ("service_curves", "per_user")}
                    if "fairness" in brief:
                        brief["fairness"] = {k: v for k, v in brief["fairness"].items() if k != "users"}
                    print(scenario, run["label"], json.dumps(brief), json.dumps(run["server"]))
    payload = {"command": " ".join(sys.argv), "environment": environment(args.threads),
               "cpu_flags": cpu_flags(), "server_args": args.server_args, "results": results}
    write_json(args.out, payload)
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
