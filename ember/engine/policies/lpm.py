"""`lpm`: longest cached prefix first (SGLang's cache-aware order).

Waiting requests are ordered by how many of their tokens the prefix cache already holds
(through the side-effect-free peek), longest first, arrival order among equals; requests
that share a prefix then run while it is still cached, instead of after it was evicted.
Above `lpm_max_waiting` waiting requests the order falls back to FCFS, as SGLang's does:
peeking costs a hash per prompt block per request per step. Preempted requests still go
first, like FCFS, and victims are FCFS's (the newest).
"""

from __future__ import annotations

from ember.engine.policies.base import POLICIES, SchedulerView
from ember.engine.policies.fcfs import FCFSPolicy
from ember.request import Request


@POLICIES.register("lpm")
class LPMPolicy(FCFSPolicy):
    name = "lpm"

    def __init__(self, config=None, max_waiting: int | None = None):
        super().__init__(config)
        self.max_waiting = max_waiting if max_waiting is not None else getattr(config, "lpm_max_waiting", 128)

    def order(self, waiting: list[Request], view: SchedulerView | None = None) -> list[Request]:
        if view is None or len(waiting) > self.max_waiting:
            return super().order(waiting)
        hits = {r.request_id: view.peek_prefix(r) for r in waiting}
        return sorted(waiting, key=lambda r: (r.num_preemptions == 0, -hits[r.request_id], r.arrival_order))
