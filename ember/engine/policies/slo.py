"""`slo`: earliest deadline first, from per-request latency targets.

A request's targets are its own (`slo_ttft_ms`, `slo_tpot_ms` on the API and in
`LLM.generate`) or the engine's defaults (`--slo-ttft-ms`, `--slo-tpot-ms`); 0 means none.
A waiting request's deadline is its arrival plus its TTFT target, or, once it has produced
tokens (it was preempted), its last token plus its TPOT target. Waiting requests run in
deadline order; one that can no longer meet its deadline (now, plus its prompt at the
prefill speed measured so far, is past it) is deferred behind every request that still can,
in arrival order: serving it first would make others miss too, which lowers goodput.
Requests without targets come last. Under KV pressure the running request with the most
slack gives way.
"""

from __future__ import annotations

import math

from ember.engine.policies.base import POLICIES, Policy, PreemptReason, SchedulerView
from ember.engine.policies.step_speed import StepSpeed
from ember.request import Request


@POLICIES.register("slo")
class SLOPolicy(Policy):
    name = "slo"

    def __init__(self, config=None):
        super().__init__(config)
        self.default_ttft = getattr(config, "slo_ttft_ms", 0.0) / 1e3
        self.default_tpot = getattr(config, "slo_tpot_ms", 0.0) / 1e3
        self.speed = StepSpeed()

    def targets(self, request: Request) -> tuple[float, float]:
        """(TTFT, TPOT) in seconds; 0: none."""
        return (request.slo_ttft_ms / 1e3 or self.default_ttft, request.slo_tpot_ms / 1e3 or self.default_tpot)

    def deadline(self, request: Request) -> float:
        ttft, tpot = self.targets(request)
        m = request.metrics
        if m.first_token_time is None:
            return m.arrival_time + ttft if ttft else math.inf
        return (m.last_token_time or m.first_token_time) + tpot if tpot else math.inf

    def can_meet(self, request: Request, now: float) -> bool:
        need = (request.num_tokens - request.num_computed_tokens) * self.speed.seconds_per_token
        return now + need <= self.deadline(request)

    def order(self, waiting: list[Request], view: SchedulerView | None = None) -> list[Request]:
        now = self.speed.start(view.clock) if view is not None else self.speed.now()
        def key(r: Request):
            d = self.deadline(r)
            meetable = d == math.inf or self.can_meet(r, now)
            return (not meetable, d if meetable and d < math.inf else math.inf, r.arrival_order)
        return sorted(waiting, key=key)

    def on_step(self, scheduled: list[tuple[Request, int]]) -> None:
        self.speed.observe(scheduled)

    def victim(self, running: list[Request], reason: PreemptReason, waiting: Request | None = None) -> Request | None:
        if reason is PreemptReason.PRIORITY:
            return None
        return max(running, key=lambda r: (self.deadline(r), r.arrival_order))
