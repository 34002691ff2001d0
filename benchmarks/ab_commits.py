"""Two commits, one benchmark, alternating runs: is the newer one slower?

Each commit is checked out in a temporary git worktree and runs its own copy of the
benchmark (its own `ember` on the path, its own C kernels: the build cache is keyed by the
sources), so nothing but the code differs. Runs alternate base, head, base, head... so drift
on the machine (heat, a neighbour) lands on both sides. Reports each figure's median per
commit and the ratio head / base.

    python benchmarks/ab_commits.py --base 78bfb4e --head HEAD --bench cpu-int4 offline-fp32 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile

# name -> (script and its arguments, {figure: path into its JSON})
BENCHES = {
    "cpu-int4": (["benchmarks/cpu_vs_llamacpp.py", "--configs", "fp32/int4", "--no-llamacpp", "--repeats", "3"],
                 {"prefill tok/s": ("results", "ember fp32/int4", "prefill_tok_s"),
                  "decode tok/s": ("results", "ember fp32/int4", "decode_tok_s"),
                  "decode@8 tok/s": ("results", "ember fp32/int4", "batched_8", "decode_tok_s"),
                  "decode@32 tok/s": ("results", "ember fp32/int4", "batched_32", "decode_tok_s")}),
    "offline-fp32": (["benchmarks/offline_throughput.py", "--dtype", "fp32", "--no-hf", "--num-requests", "64"],
                     {"generated tok/s": ("results", 0, "ember", "generated_tok_s"),
                      "total tok/s": ("results", 0, "ember", "total_tok_s")}),
}


def dig(data, path):
    for key in path:
        data = data[key]
    return float(data)


def worktree(repo: str, rev: str, into: str) -> str:
    sha = subprocess.run(["git", "-C", repo, "rev-parse", rev], check=True, capture_output=True, text=True).stdout.strip()
    path = os.path.join(into, sha[:10])
    subprocess.run(["git", "-C", repo, "worktree", "add", "--detach", path, sha], check=True, capture_output=True)
    return path


def run_once(tree: str, bench: str, threads: int, out: str) -> dict:
    script, figures = BENCHES[bench]
    env = dict(os.environ, PYTHONPATH=tree)
    cmd = [sys.executable, *script, "--threads", str(threads), "--output", out]
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        data = json.load(f)
    return {name: dig(data, path) for name, path in figures.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the commit before the change")
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--bench", nargs="+", choices=sorted(BENCHES), default=sorted(BENCHES))
    ap.add_argument("--rounds", type=int, default=2, help="runs per commit per benchmark")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", help="JSON with every run")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still removes the worktrees
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    report = {"base": args.base, "head": args.head, "runs": {}, "summary": {}}
    with tempfile.TemporaryDirectory(prefix="ember-ab-") as tmp:
        trees = {side: worktree(repo, rev, tmp) for side, rev in (("base", args.base), ("head", args.head))}
        try:
            for bench in args.bench:
                runs = {"base": [], "head": []}
                for r in range(args.rounds):
                    for side in ("base", "head"):
                        figures = run_once(trees[side], bench, args.threads, os.path.join(tmp, f"{bench}-{side}-{r}.json"))
                        runs[side].append(figures)
                        print(f"{bench} round {r + 1} {side}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()),
                              flush=True)
                report["runs"][bench] = runs
                for name in runs["base"][0]:
                    b = statistics.median(x[name] for x in runs["base"])
                    h = statistics.median(x[name] for x in runs["head"])
                    report["summary"][f"{bench} {name}"] = {"base": b, "head": h, "ratio": h / b}
                    print(f"{bench:13s} {name:16s} base {b:8.1f}  head {h:8.1f}  head/base {h / b:.3f}", flush=True)
        finally:
            for path in trees.values():
                subprocess.run(["git", "-C", repo, "worktree", "remove", "--force", path], capture_output=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
