"""`fcfs`: first come, first served; the newest running request is preempted first.

Preempted requests go back to the front of the waiting queue (ahead of new arrivals),
since they arrived earlier and may hold generated tokens already. Priorities are ignored.
"""

from __future__ import annotations

from ember.engine.policies.base import POLICIES, Policy, PreemptReason, SchedulerView
from ember.request import Request


@POLICIES.register("fcfs")
class FCFSPolicy(Policy):
    name = "fcfs"

    def order(self, waiting: list[Request], view: SchedulerView | None = None) -> list[Request]:
        return sorted(waiting, key=lambda r: (r.num_preemptions == 0, r.arrival_order))

    def victim(self, running: list[Request], reason: PreemptReason, waiting: Request | None = None) -> Request | None:
        if reason is PreemptReason.PRIORITY:
            return None  # a newcomer waits its turn
        return max(running, key=lambda r: r.arrival_order)
