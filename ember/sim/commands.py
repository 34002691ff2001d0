"""The `ember sim` commands: arguments in, model JSON or reports out (parsers: ember/sim/cli.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from ember.sim.cli import engine_overrides


def _writable(path: str, flag: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: no directory {folder}")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path}: cannot write to {folder}")


def cmd_calibrate(args) -> int:
    from ember.config import EngineConfig
    from ember.sim.calibrate import build_model_json, plot_predictions

    _writable(args.output, "-o")
    if args.plot:
        _writable(args.plot, "--plot")
    engine = dataclasses.asdict(EngineConfig())
    if args.report:
        from ember.bench.report import load_report

        recorded = load_report(args.report).get("engine")
        if not isinstance(recorded, dict):
            raise ValueError(f"{args.report} records no engine configuration (an `ember bench throughput` report does)")
        engine.update(recorded)
    engine.update(engine_overrides(args))
    EngineConfig(**{k: v for k, v in engine.items() if k in EngineConfig.__dataclass_fields__})  # checks the values
    replay = None
    if args.replay:
        from ember.bench.report import load_report
        from ember.sim.replay import replay_runs
        from ember.sim.runner import replica_capacity

        config = EngineConfig(**{k: v for k, v in engine.items() if k in EngineConfig.__dataclass_fields__})
        replay = (config, replica_capacity(config), replay_runs([load_report(p) for p in args.replay]))
    data = build_model_json(args.profiles, engine, args.seed, args.kind, replay)
    data["engine_source"] = (f"report {args.report}" if args.report else "defaults") + \
        (" + flags" if engine_overrides(args) else "")
    if not args.report and not engine_overrides(args):
        print("note: no --report or engine flags: the model records the default engine configuration; "
              "pass the profiled run's flags if they differed", file=sys.stderr)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    other = {k: v["holdout_mape_pct"] for k, v in data["compared"].items()}
    if args.replay:
        print("replay of the profiled runs, mean error of TTFT, TPOT and throughput: " + ", ".join(
            f"{k} {v['replay_error_pct']:.1f}%" for k, v in data["compared"].items()), file=sys.stderr)
    print(f"kept the {data['kind']} model: held-out MAPE {data['holdout_mape_pct']:.2f}% "
          f"({', '.join(f'{k} {v:.2f}%' for k, v in other.items())}; {data['rows']} steps, "
          f"{data['holdout']}); inter-step time {data['inter_step_s'] * 1e3:.3f} ms; time outside the engine "
          f"per request {data.get('request_latency_s', 0.0) * 1e3:.1f} ms", file=sys.stderr)
    print(f"wrote {args.output}", file=sys.stderr)
    if args.plot:
        plot_predictions(data, args.profiles, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    from ember.bench.metrics import parse_goodput
    from ember.bench.report import print_reports, save_report
    from ember.engine.policies import POLICIES
    from ember.sim.calibrate import load_model_json
    from ember.sim.runner import engine_config, replica_capacity, simulate_report
    from ember.sim.simulator import check_simulable

    slos = parse_goodput(args.goodput)
    if args.output:
        _writable(args.output, "-o")
    model_json = load_model_json(args.model_json)
    model_json["path"] = args.model_json
    config = engine_config(model_json, engine_overrides(args))
    POLICIES.create(config.policy, config)  # a bad --policy fails here, before the workload is built
    check_simulable(config)
    cluster = _cluster(args, model_json)
    sessions_at, rates, workload = _workload(args)
    capacity = replica_capacity(config)
    report = simulate_report(config, capacity, model_json, sessions_at, rates, cluster, slos, args.label or "sim",
                             workload, args.progress, args.keep_requests)
    print_reports([report])
    for run in report["runs"]:
        s = run["sim"]
        print(f"simulated {s['steps']} steps, {s['events']} events in {s['wall_s']:.2f} s "
              f"({s['events_per_s']:,.0f} events/s); {s['preemptions']} preemptions, "
              f"prefix hit rate {s['prefix_hit_rate']:.1%}", file=sys.stderr)
    if args.output:
        save_report(report, args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def parse_scaling(text: str) -> tuple[float, float]:
    """'prefill=1,decode=0.4' -> (1.0, 0.4): how a worker's step time grows on a share of a machine."""
    out = {"prefill": 1.0, "decode": 1.0}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, _, value = item.partition("=")
        try:
            if name not in out:
                raise ValueError
            out[name] = float(value)
            if not 0 <= out[name] <= 2:
                raise ValueError
        except ValueError:
            raise ValueError(f"--semi-pd-scaling: {item!r} is not prefill=A or decode=B with 0 <= A, B <= 2") from None
    return out["prefill"], out["decode"]


def _cluster(args, model_json: dict):
    """The replicas, router and scenario options of `ember sim run`, checked."""
    from ember.sim.runner import Cluster
    from ember.sim.simulator import Disaggregation

    if args.replicas < 1 or args.prefill_replicas < 0:
        raise ValueError(f"--replicas must be at least 1 and --prefill-replicas at least 0, got {args.replicas} "
                         f"and {args.prefill_replicas}")
    cluster = Cluster(args.replicas, args.router, overlap=args.overlap, pim_speedup=args.pim_attention_speedup,
                      layer_groups=args.layered_prefill)
    if args.layered_prefill < 1:
        raise ValueError(f"--layered-prefill must be at least 1 layer group, got {args.layered_prefill}")
    if args.semi_pd:
        if args.prefill_replicas:
            raise ValueError("--semi-pd and --prefill-replicas are two layouts: choose one")
        if not 0 < args.semi_pd < 1:
            raise ValueError(f"--semi-pd is the prefill worker's share of each machine, in (0, 1); got {args.semi_pd}")
        if args.power:
            raise ValueError("--power is not modelled with --semi-pd (two workers share each machine's watts)")
        cluster.disagg = Disaggregation(args.replicas, 1.0, prefill_share=args.semi_pd,
                                        scaling=parse_scaling(args.semi_pd_scaling))
    if args.prefill_replicas:
        if not args.link_gbps > 0 or args.link_latency_ms < 0:
            raise ValueError("--link-gbps must be positive and --link-latency-ms must not be negative")
        cluster.disagg = Disaggregation(args.prefill_replicas, args.link_gbps * 1e9 / 8, args.link_latency_ms / 1e3)
    if args.power:
        from ember.sim.power import parse_power

        cluster.power = parse_power(args.power, args.power_cap, args.cap_sensitivity)
    elif args.power_cap or args.cap_sensitivity:
        raise ValueError("--power-cap and --cap-sensitivity need --power (the watts of each state)")
    if args.overlap or args.pim_attention_speedup != 1.0:
        from ember.sim.phases import overlap_saving

        overlap_saving(model_json, args.overlap, args.pim_attention_speedup)  # checks values and phases
    return cluster


def _workload(args):
    """(sessions for a rate, the rates, the workload as the report records it)."""
    from ember.bench.workloads import WorkloadSpec, parse_tenant_windows, parse_tenants
    from ember.sim.workload import bench_sessions, read_trace

    if args.trace:
        if args.sweep_rate or args.request_rate != float("inf"):
            raise ValueError("--trace brings its own arrival times: drop --request-rate and --sweep-rate")
        trace = read_trace(args.trace, args.trace_block_tokens)
        span = trace[-1].arrival_s
        rates = [len(trace) / span if span > 0 else float("inf")]  # the trace's own mean rate
        return (lambda rate: trace), rates, {"trace": args.trace, "requests": len(trace)}
    spec = WorkloadSpec(name=args.workload, num_prompts=args.num_prompts, seed=args.seed, input_len=args.input_len,
                        output_len=args.output_len, range_ratio=args.range_ratio, max_input_len=args.max_input_len,
                        max_output_len=args.max_output_len, num_prefixes=args.num_prefixes,
                        prefix_len=args.prefix_len, turns=args.turns, think_time=args.think_time,
                        tenants=parse_tenants(args.tenants), tenant_windows=parse_tenant_windows(args.tenants),
                        priority_levels=getattr(args, "priority_levels", 0))
    spec.validate()
    return (lambda rate: bench_sessions(spec, rate)), args.sweep_rate or [args.request_rate], dataclasses.asdict(spec)
