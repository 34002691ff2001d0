"""`ember sim calibrate | run`: the argument parsers (the commands: ember/sim/commands.py)."""

from __future__ import annotations

import argparse
import math
import sys


def add_sim_parser(subparsers) -> None:
    from ember.cli_args import add_engine_args

    p = subparsers.add_parser("sim", help="cluster simulator calibrated from the engine's step profiles",
                              description="Simulate replicas of this engine: calibrate a step-time model from "
                                          "step-profile rows, then run workloads or traces through the real "
                                          "scheduler and policies with simulated time.")
    sub = p.add_subparsers(dest="sim_command", metavar="SIM")
    sub.required = True

    c = sub.add_parser("calibrate", help="fit a step-time model to a step profile (CSV)",
                       description="Fit a non-negative linear formula and a regression tree to the rows of a "
                                   "step profile (`ember bench throughput --profile steps.csv`), keep the one "
                                   "with the lower held-out error, and write it as JSON.",
                       conflict_handler="resolve")
    c.add_argument("profiles", nargs="+", metavar="STEPS.csv", help="one or more step profiles of one configuration")
    c.add_argument("-o", "--output", required=True, metavar="MODEL.json")
    c.add_argument("--report", default=None, metavar="BENCH.json",
                   help="the `ember bench throughput -o` report of the profiled run: its engine configuration "
                        "is recorded with the model (engine flags given here override it)")
    c.add_argument("--plot", default=None, metavar="PRED.png", help="predicted against measured step time")
    c.add_argument("--kind", choices=("auto", "linear", "split-linear", "tree"), default="auto",
                   help="the model kept: auto (the best replay with --replay, else the lowest held-out step "
                        "error), or this kind (every kind is scored)")
    c.add_argument("--replay", action="append", default=[], metavar="BENCH.json",
                   help="an `ember bench throughput` or `serve` report of a profiled run (repeatable): every kind "
                        "simulates it, scored on mean TTFT, TPOT and output throughput")
    add_engine_args(c, overrides_only=True)
    c.add_argument("--seed", type=int, default=0, help="the held-out split's seed")
    c.set_defaults(func=_guard("cmd_calibrate"))

    r = sub.add_parser("run", help="simulate a workload or a trace on N replicas",
                       description="Simulate `ember bench serve` against --replicas engines behind a router; "
                                   "writes a report `ember bench compare` reads beside measured ones. Engine "
                                   "flags override the configuration recorded in the model JSON.",
                       conflict_handler="resolve")
    r.add_argument("--model-json", required=True, metavar="MODEL.json", help="from `ember sim calibrate`")
    add_engine_args(r, overrides_only=True)
    from ember.bench.cli import _add_workload_args, _list, _rate
    from ember.sim.router import ROUTERS

    _add_workload_args(r, serve=True)
    g = r.add_argument_group("trace (instead of --workload)")
    g.add_argument("--trace", default=None, metavar="TRACE.csv",
                   help="CSV of arrival_s, prompt_tokens, output_tokens[, hash_ids][, user]")
    g.add_argument("--trace-block-tokens", type=int, default=512, help="tokens per hash id of the trace (default: 512)")
    g = r.add_argument_group("load and cluster")
    g.add_argument("--request-rate", "--rate", dest="request_rate", type=_rate, default=math.inf,
                   help="Poisson arrivals per second, or inf (default)")
    g.add_argument("--sweep-rate", type=_list(_rate), default=None, metavar="R1,R2,...", help="one run per rate")
    g.add_argument("--seed", type=int, default=0, help="workload and arrival seed")
    g.add_argument("--replicas", type=int, default=1, help="engines behind the router (default: 1)")
    g.add_argument("--router", choices=ROUTERS, default="round-robin",
                   help="which replica a request goes to (ember/sim/router.py)")
    g = r.add_argument_group("disaggregated prefill/decode (Splitwise, DistServe)")
    g.add_argument("--prefill-replicas", type=int, default=0,
                   help="replicas that only run prompts; --replicas then only decode (0: every replica does both)")
    g.add_argument("--link-gbps", type=float, default=25.0,
                   help="KV transfer bandwidth from a prefill to a decode replica, gigabits per second (default: 25)")
    g.add_argument("--link-latency-ms", type=float, default=0.0, help="fixed cost of one KV transfer")
    g.add_argument("--semi-pd", type=float, default=0.0, metavar="SHARE",
                   help="semi-disaggregated (semi-PD): on every replica a prefill worker with SHARE of the compute "
                        "beside a decode worker with the rest, one KV store, no transfer (default: off)")
    g.add_argument("--semi-pd-scaling", default="prefill=1,decode=1", metavar="prefill=A,decode=B",
                   help="a semi-PD worker's step on share s takes the full-machine time x s^-A (prefill) or s^-B "
                        "(decode): 1 for compute-bound steps, 0 for steps the core count does not change")
    g.add_argument("--goodput", nargs="+", default=None, metavar="NAME:MS", help="SLOs, e.g. ttft:500 tpot:50 e2el:5000")
    g = r.add_argument_group("power (per replica; ember/sim/power.py)")
    g.add_argument("--power", default=None, metavar="idle=W,prefill=W,decode=W",
                   help="watts in each state: energy per run and per output token")
    g.add_argument("--power-cap", type=float, default=0.0, metavar="W",
                   help="cap each replica's power (needs --power): steps above it run longer")
    g.add_argument("--cap-sensitivity", default="", metavar="prefill=X,decode=Y",
                   help="how a capped step slows: time x (watts / cap) ** X (default prefill=1,decode=0.5)")
    g = r.add_argument_group("phase models (need a profile with the fused step's timers)")
    g.add_argument("--overlap", type=float, default=0.0, metavar="F",
                   help="overlap the fused step's GEMMs and attention (NanoFlow): each step takes "
                        "F x min(linear, attention) less (0-1)")
    g.add_argument("--pim-attention-speedup", type=float, default=1.0, metavar="S",
                   help="decode attention in processing-in-memory (NeuPIMs, PIM-GPT) that reads KV S times "
                        "faster than the host: the attention phase takes 1/S (default 1: off)")
    g = r.add_argument_group("prefill")
    g.add_argument("--layered-prefill", type=int, default=1, metavar="G",
                   help="layered prefill: a step with prompt tokens runs as G sub-steps, the prompts through one "
                        "group of layers each while decodes go on every sub-step (1: off, chunked prefill "
                        "as the engine runs it; give --max-num-batched-tokens room for whole prompts)")
    g = r.add_argument_group("report")
    g.add_argument("-o", "--output", default=None, metavar="FILE.json")
    g.add_argument("--label", default=None, help="name of this run in tables (default: sim)")
    g.add_argument("--no-requests", dest="keep_requests", action="store_false",
                   help="leave the per-request records out of the JSON (large runs)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    r.set_defaults(func=_guard("cmd_run"))


def _guard(name: str):
    """Run commands.NAME; bad input ends in one line on stderr and exit status 2."""
    def run(args) -> int:
        from ember.loader.errors import ModelLoadError
        from ember.sim import commands

        try:
            return getattr(commands, name)(args)
        except (ValueError, ModelLoadError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return run


def engine_overrides(args: argparse.Namespace) -> dict:
    """The engine flags given on the command line (the others stay at the recorded values)."""
    import dataclasses

    from ember.config import EngineConfig

    names = {f.name for f in dataclasses.fields(EngineConfig)} - {"seed"}  # --seed here is the workload's
    return {k: v for k, v in vars(args).items() if k in names}
