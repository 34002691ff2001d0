"""The same `ember bench serve` workload against `ember serve` and llama.cpp's OpenAI servers.

The servers run one after the other on loopback, on the same GGUF file, with the same thread
count; the client (this checkout's `ember bench serve`) and its seeded workload are the same for
all, so the ratios compare the servers. The peers:
- `llamacpp`: `python -m llama_cpp.server` from the peer venv that `llamacpp_env.sh` builds
  (llama-cpp-python 0.3.36 from source), one request at a time;
- `llama-server-npN`: llama.cpp's own `llama-server` with N parallel slots and continuous
  batching (`-np N -cb`, a context of N x --n-ctx so each slot has --n-ctx), built from the same
  vendored llama.cpp by `llamacpp_tools.sh`.
Never part of `make test`.

  .venv/bin/python benchmarks/peers/serve_vs_llamacpp.py --workload chat-like --num-prompts 200 \\
      --sweep-rate inf,4 --out-dir reports/peers

Output tokens must match for the ratios to mean "same work": with --ignore-eos Ember ignores EOS
itself, and llama.cpp (which has no ignore_eos) gets a logit bias of -100 on its end tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEERS = os.path.join(ROOT, "benchmarks", "peers")
sys.path.insert(0, ROOT)

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from ember.bench.report import load_report, print_table, run_name  # noqa: E402
from servers import free_port, stop, wait_ready  # noqa: E402

RATIO_ROWS = (("duration s", lambda m: m["duration_s"]), ("output tok/s", lambda m: m["output_throughput"]),
              ("total tok/s", lambda m: m["total_token_throughput"]), ("requests/s", lambda m: m["request_throughput"]),
              ("TTFT mean ms", lambda m: m["ttft_ms"]["mean"]), ("TTFT p99 ms", lambda m: m["ttft_ms"]["p99"]),
              ("TPOT mean ms", lambda m: m["tpot_ms"]["mean"]), ("ITL p99 ms", lambda m: m["itl_ms"]["p99"]),
              ("E2EL mean ms", lambda m: m["e2el_ms"]["mean"]), ("completed", lambda m: m["completed"]),
              ("failed", lambda m: m["failed"]), ("output tokens", lambda m: m["total_output_tokens"]))


def peer_build(script: str, given: str | None) -> str:
    """What a peer's build script prints last (a python, a directory), unless given."""
    if given:
        return given
    out = subprocess.run(["bash", os.path.join(PEERS, script)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{script} failed:\n{out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def llama_server_command(args, model: str, port: int, slots: int) -> list[str]:
    return [os.path.join(peer_build("llamacpp_tools.sh", args.llamacpp_tools), "llama-server"), "-m", model, "--host", "127.0.0.1",
            "--port", str(port), "-t", str(args.threads), "-tb", str(args.threads), "-np", str(slots), "-cb",
            "-c", str(args.n_ctx * slots), *shlex.split(args.llama_server_args)]


def server_commands(args, model: str, port: int, name: str) -> tuple[list[str], str]:
    """(command, readiness URL) of server `name`."""
    base = f"http://127.0.0.1:{port}"
    if name.startswith("llama-server-np"):
        return llama_server_command(args, model, port, int(name[len("llama-server-np"):])), base + "/health"
    return _python_servers(args, model, port)[name]


def _python_servers(args, model: str, port: int) -> dict[str, tuple[list[str], str]]:
    """name -> (command, readiness URL)."""
    ember = [os.path.join(ROOT, ".venv", "bin", "ember"), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--model", model, "--threads", str(args.threads), "--max-num-seqs", str(args.max_num_seqs)]
    ember += shlex.split(args.ember_args)
    llama = [peer_build("llamacpp_env.sh", args.llamacpp_python) if "llamacpp" in args.servers else "python", "-m",
             "llama_cpp.server", "--model", model, "--host", "127.0.0.1", "--port", str(port),
             "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads), "--n_ctx", str(args.n_ctx),
             "--interrupt_requests", "False"]  # its default True ends a stream when another request arrives
    llama += shlex.split(args.llamacpp_args)
    base = f"http://127.0.0.1:{port}"
    return {"ember": (ember, base + "/health"), "llamacpp": (llama, base + "/v1/models")}


def bench_command(args, name: str, port: int, out: str, rate: str) -> list[str]:
    cmd = [os.path.join(ROOT, ".venv", "bin", "ember"), "bench", "serve", "--base-url", f"http://127.0.0.1:{port}",
           "--endpoint", args.endpoint, "--workload", args.workload, "--num-prompts", str(args.num_prompts),
           "--request-rate", rate, "--seed", str(args.seed), "--output", out, "--label", name]
    if args.max_concurrency:
        cmd += ["--max-concurrency", str(args.max_concurrency)]
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


def markdown_table(files: dict[str, str], peer: str) -> str:
    """The ratio table as Markdown, for benchmarks/README.md."""
    ember, llama = load_report(files["ember"]), load_report(files[peer])
    head = ["metric"]
    for run in ember["runs"]:
        rate = run_name(ember, run).split(" ", 1)[1]
        head += [f"ember {rate}", f"{peer} {rate}", "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, f in RATIO_ROWS:
        cells = [key]
        for run_e, run_l in zip(ember["runs"], llama["runs"]):
            a, b = f(run_e["metrics"]), f(run_l["metrics"])
            cells += [_num(a), _num(b), f"{a / b:.2f}" if b else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_one(args, name: str, model: str, rate: str, out: str) -> None:
    """Start server `name`, run the workload at `rate` into `out`, stop the server."""
    port = free_port()
    cmd, ready = server_commands(args, model, port, name)
    log = os.path.join(args.out_dir, f"{name}-rate{rate}-server.log")
    print(f"[{name}] {' '.join(cmd)}", file=sys.stderr)
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_ready(proc, ready, log)
        bench = bench_command(args, name, port, out, rate)
        print(f"[{name}] {' '.join(shlex.quote(c) for c in bench)}", file=sys.stderr)
        if subprocess.run(bench, cwd=ROOT).returncode != 0:
            raise SystemExit(f"[{name}] ember bench serve failed")
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
    p.add_argument("--servers", default="ember,llamacpp",
                   help="which to run, in order: ember, llamacpp, llama-server-npN (N parallel slots)")
    p.add_argument("--model", default=None, help="GGUF file (default: the default model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-num-seqs", type=int, default=32, help="ember serve --max-num-seqs")
    p.add_argument("--n-ctx", type=int, default=4096, help="llama.cpp context (its default 2048 is short for chat-like)")
    p.add_argument("--ember-args", default="", help="more `ember serve` flags, one string")
    p.add_argument("--llamacpp-args", default="", help="more `llama_cpp.server` flags, one string")
    p.add_argument("--llamacpp-python", default=None, help="python of the peer venv (default: build/find it)")
    p.add_argument("--llamacpp-tools", default=None, help="directory of llama-server (default: llamacpp_tools.sh)")
    p.add_argument("--llama-server-args", default="", help="more llama-server flags, one string")
    p.add_argument("--endpoint", default="chat", choices=["chat", "completions"])
    p.add_argument("--workload", default="chat-like")
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--sweep-rate", default="inf,4", help="request rates, one run each")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--end-tokens", default="0,2", help="token ids llama.cpp must not emit under --ignore-eos")
    p.add_argument("--bench-args", default="", help="more `ember bench serve` flags, one string")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "reports", "peers"))
    args = p.parse_args()
    args.end_tokens = [int(t) for t in args.end_tokens.split(",") if t.strip()]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not servers or any(s not in ("ember", "llamacpp") and not re.fullmatch(r"llama-server-np[1-9][0-9]*", s)
                          for s in servers):
        raise SystemExit("--servers: a comma-separated list of ember, llamacpp, llama-server-npN")
    args.servers = servers
    from ember.loader import default_model_path
    model = os.path.abspath(args.model) if args.model else default_model_path()
    os.makedirs(args.out_dir, exist_ok=True)
    parts: dict[str, list[str]] = {name: [] for name in servers}
    # rates outer, servers inner: the two runs of one rate are close in time (a shared machine's load
    # drifts), and every run gets a fresh server, so no run starts with a cache the previous one warmed
    for rate in args.sweep_rate.split(","):
        for name in servers:
            out = os.path.join(args.out_dir, f"{name}-rate{rate.strip()}.json")
            run_one(args, name, model, rate.strip(), out)
            parts[name].append(out)
    files = {name: merge_runs(paths, os.path.join(args.out_dir, f"{name}.json")) for name, paths in parts.items()}
    if "ember" in files:
        for peer in (n for n in files if n != "ember"):
            ratio_table(files, peer)
            print(markdown_table(files, peer))
    subprocess.run([os.path.join(ROOT, ".venv", "bin", "ember"), "bench", "compare", *files.values(),
                    "--plot", os.path.join(args.out_dir, "plots")], cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"results and plots in {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
