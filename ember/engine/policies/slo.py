"""`slo`: earliest deadline first, from per-request latency targets.

A request's targets are its own (`slo_ttft_ms`, `slo_tpot_ms` on the API and in
`LLM.generate`) or the engine's defaults (`--slo-ttft-ms`, `--slo-tpot-ms`); 0 means none.
A waiting request's deadline is its arrival plus its TTFT target, or, once it has produced
tokens (it was preempted), its last token plus its TPOT target. Waiting requests run in
deadline order; one that can no longer meet its deadline (now, plus the steps its prompt and
the prompts ordered before it need at the step time measured so far, is past it) is
deferred behind every request that still can, in arrival order: serving it first would make
others miss too, which lowers goodput. Requests without targets come after those that can
still make their deadlines, before those that cannot. Under KV pressure the running request with the most
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

    def order(self, waiting: list[Request], view: SchedulerView | None = None) -> list[Request]:
        """Earliest deadline first, keeping a request only if it still makes its deadline after
        the prompts ordered before it (the time to compute them at the measured step time);
        then requests without targets, then those that cannot make it, in arrival order."""
        now = self.speed.start(view.clock) if view is not None else self.speed.now()
        budget = view.max_num_batched_tokens if view is not None else 1
        timed = sorted((r for r in waiting if self.deadline(r) < math.inf), key=lambda r: (self.deadline(r), r.arrival_order))
        meetable, late, ahead = [], [], 0
        for r in timed:
            need = r.num_tokens - r.num_computed_tokens
            if now + self.speed.seconds_for(ahead + need, budget) <= self.deadline(r):
                meetable.append(r)
                ahead += need
            else:
                late.append(r)
        untimed = [r for r in waiting if self.deadline(r) == math.inf]
        return meetable + sorted(untimed + late, key=lambda r: (self.deadline(r) < math.inf, r.arrival_order))

    def on_step(self, scheduled: list[tuple[Request, int]]) -> None:
        self.speed.observe(scheduled)

    def victim(self, running: list[Request], reason: PreemptReason, waiting: Request | None = None) -> Request | None:
        if reason is PreemptReason.PRIORITY:
            return None
        return max(running, key=lambda r: (self.deadline(r), r.arrival_order))
