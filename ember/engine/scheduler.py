"""Scheduler: the waiting and running queues, one token budget per step, preemption.

Each step (Sarathi-style chunked prefill): running requests first (decodes take one token,
unfinished prefills continue with a chunk), then new requests are admitted in the policy's
order while the token budget, `max_num_seqs` and free KV blocks allow. When a running
request cannot get a block, the policy names a victim to preempt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ember.engine.policies import Policy
from ember.kv.manager import KVCacheManager
from ember.kv.preemption import Preemptor
from ember.request import Request, RequestStatus


@dataclass
class SchedulerOutput:
    scheduled: list[tuple[Request, int]] = field(default_factory=list)  # (request, new tokens this step)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)

    @property
    def empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, kv: KVCacheManager, policy: Policy, max_num_seqs: int, max_num_batched_tokens: int,
                 preemptor: Preemptor | None = None):
        self.kv, self.policy = kv, policy
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.preemptor = preemptor or Preemptor()
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.policy.on_arrival(request)
        self.waiting.append(request)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        # 1. running requests, oldest first: decodes and continuing prefill chunks
        for request in sorted(self.running, key=lambda r: r.arrival_order):
            if budget <= 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while not self.kv.allocate_slots(request, num_new):
                scheduled = {id(r) for r, _ in out.scheduled}
                candidates = [r for r in self.running
                              if r.status is RequestStatus.RUNNING and id(r) not in scheduled]
                victim = self.policy.victim(candidates)
                self._preempt(victim, out)
                if victim is request:
                    break
            if request.status is RequestStatus.RUNNING:
                out.scheduled.append((request, num_new))
                budget -= num_new
        self.running = [r for r in self.running if r.status is RequestStatus.RUNNING]
        # 2. admit waiting requests in policy order
        if not out.preempted:
            for request in self.policy.order(self.waiting):
                if budget <= 0 or len(self.running) >= self.max_num_seqs:
                    break
                if not self._admit(request, budget, out):
                    break
                budget -= out.scheduled[-1][1]
        return out

    def _admit(self, request: Request, budget: int, out: SchedulerOutput) -> bool:
        if request.status is RequestStatus.PREEMPTED and not self.preemptor.resume(request, self.kv):
            return False
        took_hits = False
        if request.num_computed_tokens == 0 and not request.block_ids:
            blocks, hit = self.kv.match_prefix(request)
            if hit:
                self.kv.take_cached(request, blocks, hit)
                took_hits = True
        num_new = min(request.num_tokens - request.num_computed_tokens, budget)
        if not self.kv.allocate_slots(request, num_new):
            if took_hits:  # give the hits back; the blocks stay cached for the next try
                self.kv.free(request)
                request.num_computed_tokens = 0
            return False
        self.waiting.remove(request)
        request.status = RequestStatus.RUNNING
        if request.metrics.first_scheduled_time is None:
            request.metrics.first_scheduled_time = time.monotonic()
        self.running.append(request)
        out.scheduled.append((request, num_new))
        return True

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.preemptor.preempt(request, self.kv)
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.append(request)
        out.preempted.append(request)

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Take a request out of the queues and give its blocks back (also the abort path)."""
        if request in self.running:
            self.running.remove(request)
        if request in self.waiting:
            self.waiting.remove(request)
        if request.status.finished:
            return
        request.status = status
        self.kv.free(request)
        self.preemptor.release(request)
        self.policy.on_finish(request)
