"""One `ember sim run`: engine config and capacity from the calibrated model, the workload at
each rate, the simulation, and a report in `ember bench serve`'s shape (kind "serve", the same
metrics per run), so `ember bench compare measured.json simulated.json` reads both."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass

from ember.bench.report import new_report
from ember.bench.serve_bench import run_metrics
from ember.config import EngineConfig
from ember.sim.power import PowerModel, energy_report
from ember.sim.simulator import Capacity, Disaggregation, Simulator


def engine_config(model_json: dict, overrides: dict) -> EngineConfig:
    """The configuration the profile came from (model JSON), with `overrides` on top (--policy...)."""
    names = {f.name for f in dataclasses.fields(EngineConfig)}
    recorded = {k: v for k, v in (model_json.get("engine") or {}).items() if k in names}
    return EngineConfig(**(recorded | overrides))


def replica_capacity(config: EngineConfig) -> Capacity:
    """KV blocks, block size and longest sequence of one replica, as the engine would size them
    (reads the model file's metadata, not its weights)."""
    from ember.kv.spec import kv_cache_spec
    from ember.loader import describe_model, resolve_model_path
    from ember.loader.auto import resolve_auto

    mc, fmt, stored = describe_model(resolve_model_path(config.model))
    resolved = resolve_auto(config.linear, config.dtype, fmt, stored)  # `auto` as the engine would load it
    spec = kv_cache_spec(dataclasses.replace(config, linear=resolved.linear, dtype=resolved.dtype), mc)
    return Capacity(spec.num_blocks, spec.block_size, spec.max_model_len, spec.bytes_per_token, spec.max_num_seqs)


def step_seconds(model_json: dict, overlap: float = 0.0, pim_speedup: float = 1.0):
    """The model's predict plus the engine loop's own time between steps; with `overlap` or
    `pim_speedup`, less what they would save of the fused step's phases (phases.py)."""
    predict, gap = model_json["model"].predict, float(model_json.get("inter_step_s", 0.0))
    if not overlap and pim_speedup == 1.0:
        return lambda *features: predict(*features) + gap
    from ember.sim.phases import overlap_saving

    saving = overlap_saving(model_json, overlap, pim_speedup)
    return lambda *f: predict(*f) + gap - saving(*f)


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # a plain counter on stderr
        return _PlainBar(total, desc, enabled)
    return tqdm(total=total, desc=desc, unit="req", file=sys.stderr, disable=not enabled, leave=False, mininterval=0.5)


class _PlainBar:
    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.enabled, self.n = total, desc, enabled, 0

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.enabled and (self.n % max(1, self.total // 20) == 0 or self.n == self.total):
            print(f"\r{self.desc}: {self.n}/{self.total}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _request_json(r) -> dict:
    r.chunk_times = list(r.chunk_times)  # the simulator keeps them in a compact array
    return r.to_json()


@dataclass
class Cluster:
    """What is simulated besides the engine: how many replicas, routed how, and the scenario options."""
    replicas: int = 1  # the decode pool when `disagg` adds a prefill pool
    router: str = "round-robin"
    disagg: Disaggregation | None = None
    power: PowerModel | None = None
    overlap: float = 0.0
    pim_speedup: float = 1.0
    layer_groups: int = 1  # layered prefill

    @property
    def machines(self) -> int:
        if self.disagg is None or self.disagg.semi:  # semi-PD: both workers share each machine
            return self.replicas
        return self.replicas + self.disagg.prefill_replicas

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"machines": self.machines}


def simulate_report(config: EngineConfig, capacity: Capacity, model_json: dict, sessions_at, rates: list[float],
                    cluster: Cluster, slos: dict[str, float], label: str, workload: dict, progress: bool = True,
                    keep_requests: bool = True) -> dict:
    """`sessions_at(rate)` gives the sessions for one rate; one run per rate, one report."""
    machines, power = cluster.machines, cluster.power
    report = new_report("serve", label, simulated=True, model_json=model_json.get("path"),
                        step_model=model_json["kind"], engine=dataclasses.asdict(config),
                        capacity=dataclasses.asdict(capacity), cluster=cluster.to_json(), workload=workload,
                        goodput_slos_ms=slos)
    for rate in rates:
        sessions = sessions_at(rate)
        sim = Simulator(config, capacity, step_seconds(model_json, cluster.overlap, cluster.pim_speedup), sessions,
                        cluster.replicas, cluster.router, disagg=cluster.disagg, power=power,
                        layer_groups=cluster.layer_groups,
                        request_latency_s=float(model_json.get("request_latency_s", 0.0)))
        bar = _progress(sim.num_requests, f"sim rate={'inf' if math.isinf(rate) else f'{rate:g}'}", progress)
        try:
            results, duration, stats = sim.run(on_done=lambda r: bar.update(1))
        finally:
            bar.close()
        metrics = run_metrics(results, duration, slos)
        metrics["energy"] = (energy_report(sim.replicas + sim.prefill_pool, duration, metrics["total_output_tokens"], power)
                             if power else {"available": False, "reason": "simulated without --power"})
        utilization = lambda busy: sum(busy) / (len(busy) * duration) if duration and busy else 0.0  # noqa: E731
        run = {"request_rate": rate, "max_concurrency": None, "metrics": metrics,
               "sim": {"events": stats.events, "steps": stats.steps, "wall_s": stats.wall_s,
                       "events_per_s": stats.events_per_s, "preemptions": stats.preemptions,
                       "prefix_hit_rate": stats.prefix_hit_rate,
                       "replica_utilization_mean": utilization(stats.replica_busy_s),
                       "prefill_utilization_mean": utilization(stats.prefill_busy_s)}}
        if "goodput" in metrics:  # what a machine is worth under these SLOs (DistServe's figure)
            metrics["goodput"]["request_goodput_per_machine"] = metrics["goodput"]["request_goodput"] / machines
        if keep_requests:
            run["requests"] = [_request_json(r) for r in results]
        report["runs"].append(run)
    report["workload_summary"] = {"requests": sum(len(s.turns) for s in sessions)}
    return report
