"""Simulated against measured (issue 20): calibrate `ember sim` from this machine's own step
profiles, then compare `ember sim run` with `ember bench serve` against a real `ember serve` on
the same workload at several request rates.

1. `ember bench throughput --profile` (saturated, offline: big batches), a second offline run over
   prompts of 40-760 tokens with short outputs (--sweep-workload: prompt lengths and chunk offsets
   no particular workload picked, as Vidur profiles operators over a grid of sizes) and `ember
   serve --profile` under `ember bench serve` at --calib-rate (served, lighter load: small
   batches) give the rows; `ember sim calibrate` fits the profiles together.
2. Every rate of --rates is measured on a fresh `ember serve` and simulated with that model; rates
   other than --calib-rate are out of sample.
3. The table: mean and p90 TTFT and TPOT and output throughput, measured, simulated, and the
   simulated / measured ratio. Timed figures move with other load on the machine: say what ran.

    python benchmarks/sim_fidelity.py --out benchmarks/results/sim/fidelity.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from ember.bench.report import load_report  # noqa: E402
from common import environment, write_json  # noqa: E402
from servers import free_port, stop, wait_ready  # noqa: E402

EMBER = [sys.executable, "-m", "ember.cli"]  # this checkout's ember (PYTHONPATH below), whatever the venv installed
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_WAIT_POLICY="PASSIVE")
FIGURES = (("ttft_ms", "mean"), ("ttft_ms", "p90"), ("tpot_ms", "mean"), ("tpot_ms", "p90"))


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr)
    if subprocess.run(cmd, cwd=ROOT, env=ENV).returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")


def measure(args, rate: float, out: str, profile: str | None, tmp: str) -> None:
    """One `ember bench serve` run against a fresh server (profiled when `profile` is given)."""
    port = free_port()
    serve = EMBER + ["serve", "--host", "127.0.0.1", "--port", str(port), *shlex.split(args.engine),
                     *shlex.split(args.sched_args)]
    if profile:
        serve += ["--profile", profile]
    log = os.path.join(tmp, f"serve-{rate:g}.log")
    with open(log, "wb") as f:
        proc = subprocess.Popen(serve, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=ENV)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/health", log)
        run(EMBER + ["bench", "serve", "--base-url", f"http://127.0.0.1:{port}", *shlex.split(args.workload),
                     "--request-rate", str(rate), "--ignore-eos", "--seed", str(args.seed), "--no-progress",
                     "--label", "measured", "--output", out])
    finally:
        stop(proc)


def calibrate(args, w, model_json: str) -> None:
    """Both profiles; the kind kept is the one whose replay of the profiled runs comes closest."""
    sweep = [w("sweep.csv")] if args.sweep_workload else []
    run(EMBER + ["sim", "calibrate", w("offline.csv"), *sweep, w("served.csv"), "--report", w("offline.json"),
                 "--replay", w("offline.json"), "--replay", w(f"measured-{args.calib_rate:g}.json"),
                 *shlex.split(args.engine), "--kind", args.kind, "-o", model_json, "--plot", w("model.png")])


def figures(report_path: str) -> dict:
    m = load_report(report_path)["runs"][0]["metrics"]
    out = {f"{k[:-3]}_{s}_ms": m[k][s] for k, s in FIGURES}
    out["output_throughput"] = m["output_throughput"]
    out["duration_s"] = m["duration_s"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", default="--threads 1 --max-num-seqs 16 --kv-cache-tokens 16384",
                   help="engine flags of every run (the profile's configuration)")
    p.add_argument("--workload", default="--workload chat-like --num-prompts 40 --max-input-len 512 --max-output-len 64")
    p.add_argument("--offline-workload", default="--workload chat-like --num-prompts 64 --max-input-len 512 --max-output-len 64")
    p.add_argument("--sweep-workload", default="--workload random --num-prompts 48 --input-len 400 --output-len 8 "
                                                "--range-ratio 0.9",
                   help="a second offline profiled run covering prompt lengths ('' for none)")
    p.add_argument("--sched-args", default="", help="scheduling flags given to the served engine and to the simulated "
                                                    "one alike, e.g. --policy vtc (the step model does not change)")
    p.add_argument("--rates", default="0.6,1.5", help="request rates to measure and simulate")
    p.add_argument("--calib-rate", type=float, default=0.6, help="the served run whose profile is calibrated from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-json", default=None, help="a model calibrated before with the same --engine: measure and "
                                                     "simulate only")
    p.add_argument("--kind", choices=("auto", "linear", "split-linear", "tree"), default="auto", help="ember sim calibrate --kind")
    p.add_argument("--resimulate", action="store_true",
                   help="reuse the profiles and measured runs in --workdir: calibrate (unless --model-json) and "
                        "simulate only")
    p.add_argument("--workdir", default=None, help="keep profiles, models and reports here (default: a temp dir)")
    p.add_argument("--out", default=None, help="the table as JSON")
    args = p.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    tmp = args.workdir or tempfile.mkdtemp(prefix="sim_fidelity_")
    os.makedirs(tmp, exist_ok=True)
    w = lambda name: os.path.join(tmp, name)  # noqa: E731
    threads = int(shlex.split(args.engine)[shlex.split(args.engine).index("--threads") + 1]) \
        if "--threads" in args.engine else 0
    env = environment(threads)  # the load average before the runs: other work on the machine skews timings

    model_json = args.model_json or w("model.json")
    if args.resimulate:  # the measured runs of an earlier run in --workdir: fit again (or take --model-json), simulate
        if not args.workdir:
            raise SystemExit("--resimulate needs --workdir of an earlier run")
        if not args.model_json:
            calibrate(args, w, model_json)
    elif args.model_json:  # calibrated before (same --engine): every rate is out of sample
        for rate in rates:
            measure(args, rate, w(f"measured-{rate:g}.json"), None, tmp)
    else:
        run(EMBER + ["bench", "throughput", *shlex.split(args.engine), *shlex.split(args.offline_workload),
                     "--seed", str(args.seed), "--profile", w("offline.csv"), "--output", w("offline.json"),
                     "--no-progress"])
        if args.sweep_workload:
            run(EMBER + ["bench", "throughput", *shlex.split(args.engine), *shlex.split(args.sweep_workload),
                         "--seed", str(args.seed), "--profile", w("sweep.csv"), "--output", w("sweep.json"),
                         "--no-progress"])
        for rate in [args.calib_rate] + [r for r in rates if r != args.calib_rate]:
            measure(args, rate, w(f"measured-{rate:g}.json"), w("served.csv") if rate == args.calib_rate else None, tmp)
        calibrate(args, w, model_json)
    model = json.load(open(model_json))
    table = []
    for rate in rates:
        run(EMBER + ["sim", "run", "--model-json", model_json, *shlex.split(args.workload), *shlex.split(args.sched_args),
                     "--request-rate",
                     str(rate), "--seed", str(args.seed), "--no-progress", "--label", "sim", "-o", w(f"sim-{rate:g}.json")])
        measured, simulated = figures(w(f"measured-{rate:g}.json")), figures(w(f"sim-{rate:g}.json"))
        table.append({"request_rate": rate, "in_sample": not args.model_json and rate == args.calib_rate, "measured": measured,
                      "simulated": simulated, "ratio": {k: simulated[k] / measured[k] for k in measured if measured[k]}})
    print(f"step model: {model['kind']}, held-out MAPE {model['holdout_mape_pct']:.1f}% "
          f"({', '.join(k + ' %.1f%%' % v['holdout_mape_pct'] for k, v in model['compared'].items())})")
    print(f"{'rate':>6} {'figure':<22} {'measured':>10} {'simulated':>10} {'sim/meas':>8}")
    for row in table:
        for k, v in row["measured"].items():
            print(f"{row['request_rate']:>6g} {k:<22} {v:>10.1f} {row['simulated'][k]:>10.1f} {row['ratio'].get(k, 0):>8.2f}")
    env["loadavg_at_end"] = os.getloadavg()
    if args.resimulate:
        env = {"measured_in_an_earlier_run": True, **json.load(open(args.out))["environment"]} \
            if args.out and os.path.exists(args.out) else {"measured_in_an_earlier_run": True}
    write_json(args.out, {"environment": env, "engine": args.engine, "sched_args": args.sched_args,
                          "workload": args.workload, "model_json": model_json,
                          "offline_workload": args.offline_workload, "sweep_workload": args.sweep_workload,
                          "calib_rate": args.calib_rate,
                          "model": {k: model[k] for k in ("kind", "holdout_mape_pct", "compared", "inter_step_s", "rows")},
                          "workdir": tmp, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
