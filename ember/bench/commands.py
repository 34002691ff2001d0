"""The `ember bench` commands: arguments in, reports out (parsers: ember/bench/cli.py)."""

from __future__ import annotations

import dataclasses
import json
import sys


def _spec(args):
    from ember.bench.workloads import WorkloadSpec, parse_tenant_windows, parse_tenants

    return WorkloadSpec(name=args.workload, num_prompts=args.num_prompts, seed=args.seed, input_len=args.input_len,
                        output_len=args.output_len, range_ratio=args.range_ratio, max_input_len=args.max_input_len,
                        max_output_len=args.max_output_len, num_prefixes=args.num_prefixes, prefix_len=args.prefix_len,
                        turns=getattr(args, "turns", 1), think_time=getattr(args, "think_time", 0.0),
                        tenants=parse_tenants(args.tenants), tenant_windows=parse_tenant_windows(args.tenants),
                        num_docs=args.num_docs, doc_len=args.doc_len,
                        docs_per_request=args.docs_per_request, doc_reuse=args.doc_reuse,
                        priority_levels=getattr(args, "priority_levels", 0))


def _check_output(args) -> None:
    """Refuse an unwritable --output or --plot before a long run, not after it."""
    import os

    for path in filter(None, (args.output and os.path.dirname(os.path.abspath(args.output)), args.plot)):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create {path}: {exc.strerror}") from None
        if not os.access(path, os.W_OK):
            raise ValueError(f"cannot write to {path}")


def _finish(report: dict, args) -> int:
    from ember.bench.report import print_reports, save_report

    print_reports([report])
    for run in report["runs"]:
        for message, count in (run["metrics"].get("errors") or {}).items():
            print(f"failed: {count} x {message}", file=sys.stderr)
    if args.output:
        save_report(report, args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    if args.plot:
        from ember.bench.plots import plot_reports

        for path in plot_reports([report], args.plot):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from ember.bench.corpus import load_tokenizer
    from ember.bench.metrics import parse_goodput
    from ember.bench.online import ClientConfig
    from ember.bench.report import energy_line
    from ember.bench.serve_bench import run_serve_benchmark
    from ember.bench.workloads import build_workload

    slos = parse_goodput(args.goodput)
    try:
        extra = json.loads(args.extra_body) if args.extra_body else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"--extra-body is not JSON: {exc}") from None
    if not isinstance(extra, dict):
        raise ValueError("--extra-body must be a JSON object")
    if args.temperature < 0 or args.timeout <= 0:
        raise ValueError("--temperature must not be negative and --timeout must be positive")
    cfg = ClientConfig(args.base_url, args.endpoint, args.model, args.request_rate, args.max_concurrency,
                       args.ignore_eos, args.temperature, args.seed, args.timeout, args.api_key, extra,
                       args.warmup_requests, args.chunk_marks)
    if args.warmup_requests < 0:
        raise ValueError("--warmup-requests must not be negative")
    cfg.validate()
    if args.sweep_concurrency and any(c < 1 for c in args.sweep_concurrency):
        raise ValueError("--sweep-concurrency values must be at least 1")
    spec = _spec(args)
    spec.validate()
    _check_output(args)
    tokenizer = load_tokenizer(args.tokenizer)
    sessions = build_workload(spec, tokenizer)
    report = run_serve_benchmark(cfg, spec, sessions, tokenizer, args.sweep_rate or [args.request_rate],
                                 args.sweep_concurrency or [args.max_concurrency], slos,
                                 args.label or "serve", progress=args.progress)
    code = _finish(report, args)
    print(energy_line(report["runs"][-1]["metrics"]["energy"]), file=sys.stderr)
    return code


def _engine(args):
    from ember import LLM
    from ember.cli_args import engine_config

    return LLM(progress=False, **dataclasses.asdict(engine_config(args)))


def cmd_throughput(args) -> int:
    from ember.bench.offline import prompts_of, run_throughput
    from ember.bench.report import new_report
    from ember.bench.workloads import build_workload
    from ember.engine.profile import check_profile_path

    spec = _spec(args)
    if spec.name in ("multi-turn", "agent"):
        raise ValueError(f"{spec.name} needs the server's replies between turns; run it with `ember bench serve`")
    _check_output(args)
    if args.profile:
        check_profile_path(args.profile)
    llm = _engine(args)
    sessions = build_workload(spec, llm.tokenizer)
    prompts_of(sessions, args.chunk_marks)  # refuses what offline cannot run, before any work
    if args.profile:
        llm.engine.profiler.enable(args.profile)
    try:
        run = run_throughput(llm, sessions, args.ignore_eos, args.temperature, args.seed, args.chat, args.progress,
                             args.chunk_marks)
    finally:
        llm.engine.profiler.disable()
    if args.profile:
        print(f"wrote {args.profile} ({llm.engine.profiler.num_steps} steps)", file=sys.stderr)
    report = new_report("throughput", args.label or "ember offline", workload=dataclasses.asdict(spec),
                        engine=dataclasses.asdict(llm.config))
    report["runs"].append(run)
    return _finish(report, args)


def cmd_latency(args) -> int:
    from tqdm import tqdm

    from ember.bench.latency import run_latency
    from ember.bench.report import new_report

    if min(args.batch_size) < 1 or args.input_len < 1 or args.output_len < 1 or args.num_iters < 1 \
            or args.num_iters_warmup < 0:
        raise ValueError("--batch-size, --input-len, --output-len and --num-iters must be at least 1")
    _check_output(args)
    llm = _engine(args)
    report = new_report("latency", args.label or "ember latency", engine=dataclasses.asdict(llm.config))
    steps = len(args.batch_size) * (args.num_iters + args.num_iters_warmup)
    with tqdm(total=steps, desc="latency", unit="iter", file=sys.stderr, disable=not args.progress, leave=False) as bar:
        for bs in args.batch_size:
            report["runs"].append(run_latency(llm, bs, args.input_len, args.output_len, args.num_iters,
                                              args.num_iters_warmup, args.seed, progress=lambda: bar.update(1)))
    return _finish(report, args)


def cmd_compare(args) -> int:
    from ember.bench.report import load_report, print_reports

    reports = [load_report(path) for path in args.files]
    print_reports(reports)
    if args.plot:
        from ember.bench.plots import plot_reports

        paths = plot_reports(reports, args.plot)
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)
        if not paths:
            print("no per-request data to plot in these files", file=sys.stderr)
    return 0
