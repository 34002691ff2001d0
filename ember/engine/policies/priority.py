"""`priority`: lower `Request.priority` runs sooner (vLLM's convention), ties by arrival.

Under KV pressure the running request with the largest (priority, arrival) gives way; a
waiting request that cannot be admitted preempts that same request when its own priority
is strictly better, so equal priorities never preempt each other.
"""

from __future__ import annotations

from ember.engine.policies.base import POLICIES, Policy, PreemptReason, SchedulerView
from ember.request import Request


def rank(request: Request) -> tuple[int, int]:
    return request.priority, request.arrival_order


@POLICIES.register("priority")
class PriorityPolicy(Policy):
    name = "priority"

    def order(self, waiting: list[Request], view: SchedulerView | None = None) -> list[Request]:
        return sorted(waiting, key=rank)

    def victim(self, running: list[Request], reason: PreemptReason, waiting: Request | None = None) -> Request | None:
        worst = max(running, key=rank, default=None)
        if reason is PreemptReason.PRIORITY and (worst is None or waiting is None or worst.priority <= waiting.priority):
            return None
        return worst
