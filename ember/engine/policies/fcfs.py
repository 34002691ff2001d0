"""`fcfs`: first come, first served; the newest running request is preempted first.

Preempted requests go back to the front of the waiting queue (ahead of new arrivals),
since they arrived earlier and may hold generated tokens already.
"""

from __future__ import annotations

from ember.engine.policies.base import POLICIES, Policy
from ember.request import Request


@POLICIES.register("fcfs")
class FCFSPolicy(Policy):
    name = "fcfs"

    def order(self, waiting: list[Request]) -> list[Request]:
        return sorted(waiting, key=lambda r: (r.num_preemptions == 0, r.arrival_order))

    def victim(self, running: list[Request]) -> Request:
        return max(running, key=lambda r: r.arrival_order)
