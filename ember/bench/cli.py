"""`ember bench serve | throughput | latency | compare`: the argument parsers and the commands."""

from __future__ import annotations

import argparse
import json
import math
import sys

DEFAULT_URL = "http://127.0.0.1:8000"


def add_bench_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: serve (any OpenAI endpoint), throughput, latency, compare",
                              description="Benchmarks. `ember bench serve` measures any OpenAI-compatible server; "
                                          "`throughput` and `latency` run the engine in-process.")
    sub = p.add_subparsers(dest="bench_command", metavar="BENCH")
    sub.required = True
    _add_serve(sub)
    _add_throughput(sub)
    _add_latency(sub)
    c = sub.add_parser("compare", help="tables and plots of several result files side by side",
                       description="Read `ember bench` JSON files and print their runs side by side "
                                   "(with the ratio when there are two); --plot DIR draws them on shared charts.")
    c.add_argument("files", nargs="+", metavar="FILE.json")
    c.add_argument("--plot", metavar="DIR", default=None, help="write PNG charts to DIR")
    c.set_defaults(func=_guard("cmd_compare"))


def _rate(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (a positive number or inf)") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"the rate must be positive (or inf), got {text!r}")
    return v


def _list(kind):
    def parse(text: str):
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return values
    return parse


def _add_workload_args(p, serve: bool) -> None:
    from ember.bench.workloads import WORKLOADS

    g = p.add_argument_group("workload (generated offline from --seed)")
    g.add_argument("--workload", choices=WORKLOADS, default="random")
    g.add_argument("--num-prompts", type=int, default=100, help="requests to send (multi-turn: turns)")
    g.add_argument("--input-len", type=int, default=128, help="prompt tokens (random, shared-prefix question, multi-turn message)")
    g.add_argument("--output-len", type=int, default=64, help="max_tokens (random, shared-prefix, multi-turn)")
    g.add_argument("--range-ratio", type=float, default=0.0, help="lengths uniform in L*(1-r)..L*(1+r)")
    g.add_argument("--max-input-len", type=int, default=1024, help="chat-like: longest prompt")
    g.add_argument("--max-output-len", type=int, default=512, help="chat-like: longest output")
    g.add_argument("--num-prefixes", type=int, default=4, help="shared-prefix: groups")
    g.add_argument("--prefix-len", type=int, default=256, help="shared-prefix: system prompt tokens")
    if serve:
        g.add_argument("--turns", type=int, default=3, help="multi-turn, agent: turns per conversation")
        g.add_argument("--think-time", type=float, default=1.0, help="multi-turn: mean seconds between turns; agent: scales the tool durations")
    g.add_argument("--tenants", default="a:3:64:32,b:1:256:128",
                   help="multi-tenant: NAME:WEIGHT:INPUT:OUTPUT[:ON/OFF],... (share of requests, lengths; ON/OFF "
                        "seconds: the tenant sends only in its on periods)")
    g.add_argument("--num-docs", type=int, default=16, help="rag: documents in the pool")
    g.add_argument("--doc-len", type=int, default=256, help="rag: tokens per document")
    g.add_argument("--docs-per-request", type=int, default=4, help="rag: documents before each question")
    g.add_argument("--doc-reuse", type=float, default=1.0, help="rag: chance a document comes from the pool (else a fresh one)")
    g.add_argument("--priority-levels", type=int, default=0, metavar="K",
                   help="send each session's requests with a priority uniform in 0..K-1 (for --policy priority; "
                        "default: none)")
    g.add_argument("--chunk-marks", action=argparse.BooleanOptionalAction, default=True,
                   help="rag: send documents as reusable chunks (Ember's extension) or, with --no-chunk-marks, as plain text")


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="benchmark an OpenAI-compatible server (ember serve, llama-server, vLLM...)",
                       description="Stream a seeded workload to --base-url and report TTFT, TPOT, ITL, E2E, "
                                   "throughput and goodput as vLLM's benchmark_serving defines them.")
    p.add_argument("--base-url", default=DEFAULT_URL, help=f"server root, with or without /v1 (default: {DEFAULT_URL})")
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--model", default=None, help="model name to send (default: the first of GET /v1/models)")
    p.add_argument("--tokenizer", default=None, help="GGUF file or HF directory to cut prompts with (default: the default model)")
    _add_workload_args(p, serve=True)
    g = p.add_argument_group("load")
    g.add_argument("--request-rate", type=_rate, default=math.inf, help="Poisson arrivals per second, or inf (default)")
    g.add_argument("--max-concurrency", type=int, default=None, help="most requests in flight at once")
    g.add_argument("--sweep-rate", type=_list(_rate), default=None, metavar="R1,R2,...", help="one run per rate")
    g.add_argument("--sweep-concurrency", type=_list(int), default=None, metavar="C1,C2,...", help="one run per concurrency")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--ignore-eos", action="store_true", help="ask the server to generate max_tokens every time")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--extra-body", default=None, metavar="JSON", help="fields merged into every request body")
    g.add_argument("--api-key", default=None)
    g.add_argument("--timeout", type=float, default=600.0, help="seconds a request may wait for its next bytes")
    g.add_argument("--warmup-requests", type=int, default=1,
                   help="short untimed requests sent first, one by one (default: 1; a failure stops the run)")
    _add_report_args(p)
    g = p.add_argument_group("goodput")
    g.add_argument("--goodput", nargs="+", default=None, metavar="NAME:MS", help="SLOs, e.g. ttft:500 tpot:50 e2el:5000")
    p.set_defaults(func=_guard("cmd_serve"))


def _add_report_args(p) -> None:
    g = p.add_argument_group("report")
    g.add_argument("--output", default=None, metavar="FILE.json", help="write every figure and request as JSON")
    g.add_argument("--plot", default=None, metavar="DIR", help="write PNG charts to DIR")
    g.add_argument("--label", default=None, help="name of this run in tables and plots")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _add_throughput(sub) -> None:
    from ember.cli_args import add_engine_args

    p = sub.add_parser("throughput", help="offline throughput of the engine in-process (LLM.generate)",
                       description="Generate a whole seeded workload with one LLM.generate call; report "
                                   "requests, output tokens and all tokens per second.", conflict_handler="resolve")
    add_engine_args(p)
    _add_workload_args(p, serve=False)
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="generate exactly max_tokens per request (default: on)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    p.add_argument("--profile", default=None, metavar="FILE.csv",
                   help="write one CSV row per engine step: its phases' times and its batch (columns: "
                        "ember/engine/profile.py)")
    _add_report_args(p)
    p.set_defaults(func=_guard("cmd_throughput"))


def _add_latency(sub) -> None:
    from ember.cli_args import add_engine_args

    p = sub.add_parser("latency", help="prefill and per-token decode time of one batch, in-process",
                       description="Time batches of --batch-size prompts of --input-len tokens generating "
                                   "--output-len tokens each.", conflict_handler="resolve")
    add_engine_args(p)
    p.add_argument("--batch-size", type=_list(int), default=[1], metavar="B1,B2,...", help="batch sizes to sweep")
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--num-iters", type=int, default=3)
    p.add_argument("--num-iters-warmup", type=int, default=1)
    _add_report_args(p)
    p.set_defaults(func=_guard("cmd_latency"))


def _guard(name: str):
    """Run commands.NAME; bad input and unreachable servers end in one line on stderr and exit
    status 2, not a traceback. (The commands module is imported only when a bench command runs.)"""
    def run(args) -> int:
        from ember.bench import commands
        from ember.loader.errors import ModelLoadError

        try:
            return getattr(commands, name)(args)
        except (ValueError, ModelLoadError, ConnectionError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return run
