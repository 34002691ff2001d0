"""The same `ember bench serve` workload against `ember serve` and the peers' OpenAI servers.

The servers run one after the other on loopback, on the same GGUF file (vLLM: the same weights
as an HF folder), with the same thread count; the client (this checkout's `ember bench serve`)
and its seeded workload are the same for all, so the ratios compare the servers. The servers
and how each is started: serving_peers.py. Each load point (a request rate of --sweep-rate, or a
fixed number of requests in flight of --sweep-concurrency) gets a fresh server per engine; each
run also records the server's start-up time (process start to ready) and peak resident memory
(its whole process tree). Never part of `make test`.

  .venv/bin/python benchmarks/peers/serve_vs_llamacpp.py --servers ember,llama-server-np32,vllm \\
      --workload chat-like --num-prompts 48 --sweep-rate 1,2 --sweep-concurrency 1,8,32

Output tokens must match for the ratios to mean "same work": with --ignore-eos Ember ignores EOS
itself, and llama.cpp (which has no ignore_eos) gets a logit bias of -100 on its end tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "peers"))
import serving_peers  # noqa: E402
from ember.bench.report import load_report, print_table, run_name  # noqa: E402
from servers import free_port, stop, tree_peak_rss_mib, wait_ready  # noqa: E402

RATIO_ROWS = (("duration s", lambda m: m["duration_s"]), ("output tok/s", lambda m: m["output_throughput"]),
              ("total tok/s", lambda m: m["total_token_throughput"]), ("requests/s", lambda m: m["request_throughput"]),
              ("TTFT mean ms", lambda m: m["ttft_ms"]["mean"]), ("TTFT p99 ms", lambda m: m["ttft_ms"]["p99"]),
              ("TPOT mean ms", lambda m: m["tpot_ms"]["mean"]), ("ITL p99 ms", lambda m: m["itl_ms"]["p99"]),
              ("E2EL mean ms", lambda m: m["e2el_ms"]["mean"]), ("completed", lambda m: m["completed"]),
              ("failed", lambda m: m["failed"]), ("output tokens", lambda m: m["total_output_tokens"]))


def bench_command(args, name: str, port: int, out: str, point: tuple[str, int | None]) -> list[str]:
    rate, concurrency = point
    cmd = [os.path.join(ROOT, ".venv", "bin", "ember"), "bench", "serve", "--base-url", f"http://127.0.0.1:{port}",
           "--endpoint", args.endpoint, "--workload", args.workload, "--num-prompts", str(args.num_prompts),
           "--request-rate", rate, "--seed", str(args.seed), "--output", out, "--label", name]
    if concurrency or args.max_concurrency:
        cmd += ["--max-concurrency", str(concurrency or args.max_concurrency)]
    if args.ignore_eos:
        cmd += ["--ignore-eos"]
        if name != "ember":  # no ignore_eos field in llama_cpp.server: forbid the end tokens instead
            cmd += ["--extra-body", json.dumps({"logit_bias": {str(t): -100.0 for t in args.end_tokens}})]
    return cmd + shlex.split(args.bench_args)


def ratio_table(files: dict[str, str], peer: str) -> None:
    ember, llama = load_report(files["ember"]), load_report(files[peer])
    columns = []
    for run_e, run_l in zip(ember["runs"], llama["runs"]):
        me, ml = run_e["metrics"], run_l["metrics"]
        rows_e = [(k, f(me)) for k, f in RATIO_ROWS]
        rows_l = [(k, f(ml)) for k, f in RATIO_ROWS]
        rows_r = [(k, (a / b) if isinstance(a, (int, float)) and b else float("nan")) for (k, a), (_, b) in zip(rows_e, rows_l)]
        columns += [(run_name(ember, run_e), rows_e), (run_name(llama, run_l), rows_l), (f"ember / {peer}", rows_r)]
    print_table(columns, f"ember serve vs {peer} (same client, same workload)")


def _num(v) -> str:
    if not isinstance(v, float):
        return str(v)
    return f"{v:,.2f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"


SUMMARY = (("output tok/s", lambda m: m["output_throughput"]), ("TTFT mean ms", lambda m: m["ttft_ms"]["mean"]),
           ("TTFT p99 ms", lambda m: m["ttft_ms"]["p99"]), ("TPOT mean ms", lambda m: m["tpot_ms"]["mean"]))


def summary_table(files: dict[str, str], seen: dict[str, dict[str, dict]], points: list[str]) -> str:
    """Every server at every load point as Markdown (benchmarks/README.md), with Ember's ratio to
    each peer's output throughput and p99 TTFT."""
    head = ["load", "server", *(k for k, _ in SUMMARY), "peak RSS MiB", "start-up s", "Ember / it: tok/s, p99 TTFT"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reports = {name: load_report(path)["runs"] for name, path in files.items()}
    for i, point in enumerate(points):
        ember = reports["ember"][i]["metrics"] if "ember" in reports else None
        for name, runs in reports.items():
            m, extra = runs[i]["metrics"], seen[name][point]
            ratio = "" if ember is None or name == "ember" else \
                f"{ember['output_throughput'] / m['output_throughput']:.2f}x, {ember['ttft_ms']['p99'] / m['ttft_ms']['p99']:.2f}x"
            cells = [point, name, *(_num(f(m)) for _, f in SUMMARY), _num(extra["peak_rss_mib"]),
                     f"{extra['startup_s']:.1f}", ratio]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def point_name(point: tuple[str, int | None]) -> str:
    rate, concurrency = point
    return f"c{concurrency}" if concurrency else f"rate{rate}"


def run_one(args, name: str, model: str, point: tuple[str, int | None], out: str) -> dict:
    """Start server `name`, run the workload at `point` into `out`, stop the server; returns the
    server's start-up seconds and peak memory."""
    port = free_port()
    cmd, ready, env = serving_peers.server(args, name, model, port)
    log = os.path.join(args.out_dir, f"{name}-{point_name(point)}-server.log")
    print(f"[{name}] {' '.join(cmd)}", file=sys.stderr)
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        wait_ready(proc, ready, log, poll_s=0.05)
        startup = time.perf_counter() - t0
        bench = bench_command(args, name, port, out, point)
        print(f"[{name}] {' '.join(shlex.quote(c) for c in bench)}", file=sys.stderr)
        if subprocess.run(bench, cwd=ROOT).returncode != 0:
            raise SystemExit(f"[{name}] ember bench serve failed")
        return {"startup_s": startup, "peak_rss_mib": tree_peak_rss_mib(proc.pid)}
    finally:
        stop(proc)


def merge_runs(paths: list[str], out: str) -> str:
    """One report holding the runs of several single-rate reports (what `compare` plots as a sweep)."""
    from ember.bench.report import save_report

    merged = load_report(paths[0])
    for path in paths[1:]:
        merged["runs"] += load_report(path)["runs"]
    save_report(merged, out)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="ember,llamacpp", help=f"which to run, in order: {serving_peers.NAMES}")
    p.add_argument("--model", default=None, help="GGUF file (default: the default model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-num-seqs", type=int, default=32, help="ember serve and vLLM --max-num-seqs")
    p.add_argument("--n-ctx", type=int, default=4096, help="llama.cpp context (its default 2048 is short for chat-like)")
    p.add_argument("--ember-args", default="", help="more `ember serve` flags, one string")
    p.add_argument("--llamacpp-args", default="", help="more `llama_cpp.server` flags, one string")
    p.add_argument("--llamacpp-python", default=None, help="python of the peer venv (default: build/find it)")
    p.add_argument("--llamacpp-extra-bufts", action="store_true",
                   help="let llama_cpp.server use llama.cpp's extra weight layouts (AMX; crashes in this VM)")
    p.add_argument("--llamacpp-tools", default=None, help="directory of llama-server (default: llamacpp_tools.sh)")
    p.add_argument("--llama-server-args", default="", help="more llama-server flags, one string")
    p.add_argument("--vllm-python", default=None, help="python of the vLLM venv (default: vllm_env.sh)")
    p.add_argument("--vllm-args", default="", help="more vLLM server flags, one string")
    p.add_argument("--endpoint", default="chat", choices=["chat", "completions"])
    p.add_argument("--workload", default="chat-like")
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--sweep-rate", default="inf,4", help="request rates, one run each ('' for none)")
    p.add_argument("--sweep-concurrency", default="",
                   help="numbers of requests in flight, one run each (all sent at once, at most C open)")
    p.add_argument("--max-concurrency", type=int, default=None, help="a cap for the --sweep-rate runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--end-tokens", default="0,2", help="token ids llama.cpp must not emit under --ignore-eos")
    p.add_argument("--bench-args", default="", help="more `ember bench serve` flags, one string")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "reports", "peers"))
    args = p.parse_args()
    args.end_tokens = [int(t) for t in args.end_tokens.split(",") if t.strip()]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not servers or not all(serving_peers.valid(s) for s in servers):
        raise SystemExit(f"--servers: a comma-separated list of {serving_peers.NAMES}")
    args.servers = servers
    try:
        points = [(r.strip(), None) for r in args.sweep_rate.split(",") if r.strip()]
        points += [("inf", int(c)) for c in args.sweep_concurrency.split(",") if c.strip()]
    except ValueError:
        raise SystemExit(f"--sweep-concurrency: whole numbers, comma-separated (got {args.sweep_concurrency!r})")
    if not points:
        raise SystemExit("nothing to run: give --sweep-rate or --sweep-concurrency")
    from ember.loader import default_model_path
    model = os.path.abspath(args.model) if args.model else default_model_path()
    os.makedirs(args.out_dir, exist_ok=True)
    parts: dict[str, list[str]] = {name: [] for name in servers}
    servers_seen: dict[str, dict[str, dict]] = {name: {} for name in servers}
    # points outer, servers inner: the runs of one point are close in time (a shared machine's load
    # drifts), and every run gets a fresh server, so no run starts with a cache the previous one warmed
    for point in points:
        for name in servers:
            out = os.path.join(args.out_dir, f"{name}-{point_name(point)}.json")
            servers_seen[name][point_name(point)] = run_one(args, name, model, point, out)
            parts[name].append(out)
    files = {name: merge_runs(paths, os.path.join(args.out_dir, f"{name}.json")) for name, paths in parts.items()}
    json.dump(servers_seen, open(os.path.join(args.out_dir, "servers.json"), "w"), indent=1)
    if "ember" in files:
        for peer in (n for n in files if n != "ember"):
            ratio_table(files, peer)
    print(summary_table(files, servers_seen, [point_name(p) for p in points]))
    subprocess.run([os.path.join(ROOT, ".venv", "bin", "ember"), "bench", "compare", *files.values(),
                    "--plot", os.path.join(args.out_dir, "plots")], cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"results and plots in {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
