"""Scheduler: the waiting and running queues, one token budget per step, preemption, and
what happens to requests after a step.

Each step (Sarathi-style chunked prefill): running requests first (decodes take one token,
unfinished prefills continue with a chunk), then waiting requests in the policy's order,
each if the policy admits it and the token budget, `max_num_seqs` and free KV blocks allow.
When a running request cannot get a block, the policy names a victim to preempt; when a
waiting request does not fit, the policy may name one to preempt for it.

`update` takes the step's sampled tokens and does the bookkeeping: computed tokens, full
blocks into the prefix cache, n > 1 forks, stop checks, finishing. Nothing here needs a
model, so a simulator drives the same objects with a step-time model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from ember.engine.policies import Admission, Policy, PreemptReason, SchedulerView
from ember.kv.manager import KVCacheManager
from ember.kv.pins import KVPins
from ember.kv.preemption import Preemptor
from ember.request import Request, RequestStatus


@dataclass
class SchedulerOutput:
    scheduled: list[tuple[Request, int]] = field(default_factory=list)  # (request, new tokens this step)
    preempted: list[Request] = field(default_factory=list)
    # (parent, child): the parent's prompt completes this step, and the child (one of its n
    # sequences) starts from the parent's KV blocks after it, sampling from the parent's logits.
    forks: list[tuple[Request, Request]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)

    @property
    def empty(self) -> bool:
        return not self.scheduled

    @property
    def sample_requests(self) -> list[Request]:
        """Scheduled requests whose known tokens are all computed by this step: each samples a
        token (read before `update`, which advances the counts), and so does each fork child."""
        return [r for r, n in self.scheduled if r.num_computed_tokens + n == r.num_tokens]


class Scheduler:
    def __init__(self, kv: KVCacheManager, policy: Policy, max_num_seqs: int, max_num_batched_tokens: int,
                 preemptor: Preemptor | None = None, eos_token_ids: Iterable[int] = (),
                 clock: Callable[[], float] = time.monotonic):
        """`eos_token_ids`: tokens that end a sequence unless its params ignore EOS (the
        tokenizer's). `clock` stamps request metrics (a simulator passes its own)."""
        self.kv, self.policy = kv, policy
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.preemptor = preemptor or Preemptor()
        self.eos_token_ids = frozenset(eos_token_ids)
        self.clock = clock
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.num_preemptions = 0
        self._forks: dict[str, list[Request]] = {}  # parent id -> siblings waiting for its prompt
        self.pins = KVPins(kv)  # program id -> the KV its last turn left pinned (Policy.keep_kv_for)

    def add(self, request: Request, forks: Iterable[Request] = ()) -> None:
        """Queue a request; `forks` (the other sequences of an n > 1 prompt) start from its
        KV blocks once its prompt is computed, instead of computing the prompt again."""
        request.status = RequestStatus.WAITING
        self.policy.on_arrival(request)
        self.waiting.append(request)
        forks = list(forks)
        if forks:
            self._forks[request.request_id] = forks

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def view(self, token_budget: int) -> SchedulerView:
        return SchedulerView(self.kv.pool.num_free_blocks, self.kv.pool.num_blocks, self.kv.block_size, token_budget,
                             self.max_num_seqs, self.max_num_batched_tokens, tuple(self.running), self.kv.peek_prefix, self.clock,
                             frozenset(self.pins))

    # --- schedule -----------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        if len(self.pins):
            self.pins.expire(self.clock())
        # 1. running requests, oldest first: decodes and continuing prefill chunks
        for request in sorted(self.running, key=lambda r: r.arrival_order):
            if budget <= 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while not self.kv.allocate_slots(request, num_new):
                if self.pins.release_oldest():  # pinned KV is a bet on a return; a running request comes first
                    continue
                victim = self.policy.victim(list(self.running), PreemptReason.KV_PRESSURE)
                budget += self._preempt(victim, out)
                if victim is request:
                    break
            if request.status is RequestStatus.RUNNING:
                out.scheduled.append((request, num_new))
                budget -= num_new
        # 2. waiting requests in policy order (none after a preemption: memory is short)
        if not out.preempted:
            self._admit_waiting(out, budget)
        if self._forks:  # n > 1 prompts waiting for their parent's prompt (rare: skip the scan)
            out.forks = [(parent, child) for parent in out.sample_requests
                         for child in self._forks.get(parent.request_id, ()) if not child.is_finished]
        return out

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        for request in self.policy.order(list(self.waiting), self.view(budget)):
            if budget <= 0:
                break
            decision = self.policy.admit(request, self.view(budget))
            if decision is Admission.SKIP:
                continue
            if decision is Admission.STOP:
                break
            num_new = self._admit(request, budget, out)
            if not num_new and self.preemptor.in_flight(request):
                continue  # its KV is on its way back: others go meanwhile
            while not num_new and len(self.running) < self.max_num_seqs and self.pins.release_oldest():
                num_new = self._admit(request, budget, out)
            while not num_new:  # it does not fit: the policy may make room
                victim = self.policy.victim(list(self.running), PreemptReason.PRIORITY, waiting=request)
                if victim is None:
                    break
                budget += self._preempt(victim, out)
                num_new = self._admit(request, budget, out)
            if not num_new:
                break  # first come, first served: nothing behind it jumps the queue
            budget -= num_new

    def _admit(self, request: Request, budget: int, out: SchedulerOutput) -> int:
        """Start a waiting request with up to `budget` tokens; the tokens scheduled, 0 if it does not fit."""
        if len(self.running) >= self.max_num_seqs:
            return 0
        if request.status is RequestStatus.PREEMPTED and not self.preemptor.resume(request, self.kv):
            return 0
        looked_up, hit = False, 0
        if request.num_computed_tokens == 0 and not request.block_ids:
            looked_up = True
            blocks, hit = self.kv.find_prefix(request)
            if hit:
                self.kv.take_cached(request, blocks, hit)
        num_new = min(request.num_tokens - request.num_computed_tokens, budget)
        plan = self.kv.plan_blend(request, hit) if looked_up else None
        if plan is not None:
            # a blend is one piece of work: its range goes in this step whatever the budget
            num_new = max(num_new, plan.end - request.num_computed_tokens)
            reserve = self.kv.blocks_needed(request.num_cached_tokens + num_new) - len(request.block_ids)
            if not self.kv.take_blend(request, plan, reserve):
                num_new = min(request.num_tokens - request.num_computed_tokens, budget)  # no room: prefill it all
        if not self.kv.allocate_slots(request, num_new):
            if hit or request.blend is not None:  # give the hits back; the blocks stay cached for the next try
                self.kv.free(request)
                request.num_computed_tokens = request.num_dropped_tokens = 0
            return 0
        if looked_up:  # counted once it is admitted, not at every try
            self.kv.record_lookup(request, hit)
        self.waiting.remove(request)
        if request.program_id is not None:
            self.pins.release(request.program_id)  # the next turn holds what it found cached
        request.status = RequestStatus.RUNNING
        if request.metrics.first_scheduled_time is None:
            request.metrics.first_scheduled_time = self.clock()
        self.running.append(request)
        out.scheduled.append((request, num_new))
        return num_new

    def _preempt(self, request: Request, out: SchedulerOutput) -> int:
        """Move a running request back to waiting; returns the tokens it had been scheduled this step."""
        unscheduled = 0
        for i, (r, n) in enumerate(out.scheduled):
            if r is request:
                unscheduled = n
                del out.scheduled[i]
                break
        self.running.remove(request)
        self.preemptor.preempt(request, self.kv)
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.append(request)
        out.preempted.append(request)
        return unscheduled

    # --- after the step -----------------------------------------------------------------------
    def update(self, out: SchedulerOutput, sampled: Mapping[str, int],
               stop_string: Callable[[Request, int], str | None] | None = None) -> list[Request]:
        """Account for a step that computed `out`: returns the requests that finished.

        `sampled` maps request id -> the token sampled for it: every request whose known tokens
        were all computed this step, forked children included. `stop_string(request, token)`
        is called for each new token that no token-level stop (EOS, stop_token_ids) ended; it
        returns the stop string the token completed, if any (the engine's detokenizer).
        """
        for request, n in out.scheduled:
            if request.blend is not None:
                self.kv.release_blend(request, computed=True)
            request.num_computed_tokens += n
            self.kv.cache_full_blocks(request)
        for parent, child in out.forks:
            self._fork(parent, child)
        by_id = {r.request_id: r for r, _ in out.scheduled}
        by_id.update((child.request_id, child) for _, child in out.forks)
        now = self.clock()
        finished = []
        for request_id, token in sampled.items():
            request = by_id[request_id]
            status = self._append(request, token, stop_string, now)
            if status is not None:
                self.finish(request, status)
                finished.append(request)
        self.policy.on_step(out.scheduled)
        return finished

    def _fork(self, parent: Request, child: Request) -> None:
        """A parent whose prompt just completed brings a waiting sibling in, sharing its blocks."""
        self._forks.pop(parent.request_id, None)
        if child.is_finished:
            return
        self.kv.fork(parent, child)
        child.status = RequestStatus.RUNNING
        child.metrics.first_scheduled_time = parent.metrics.first_scheduled_time
        self.running.append(child)

    def _append(self, request: Request, token: int, stop_string, now: float) -> RequestStatus | None:
        """Add a sampled token; the status it finishes the request with, if it does."""
        request.output_token_ids.append(token)
        if request.metrics.first_token_time is None:
            request.metrics.first_token_time = now
        request.metrics.last_token_time = now
        if request.matcher is not None:
            request.matcher.advance(token)
        p = request.params
        if not p.ignore_eos and token in self.eos_token_ids:
            return RequestStatus.FINISHED_STOPPED
        if token in p.stop_token_ids:
            request.stop_reason = token
            return RequestStatus.FINISHED_STOPPED
        stop = stop_string(request, token) if stop_string is not None else None
        if stop is not None:
            request.stop_reason = stop
            return RequestStatus.FINISHED_STOPPED
        if request.matcher is not None and request.matcher.is_terminated:
            return RequestStatus.FINISHED_STOPPED  # the grammar is complete: only EOS could follow
        if len(request.output_token_ids) >= request.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Take a request out of the queues and give its blocks back (also the abort path)."""
        if request in self.running:
            self.running.remove(request)
        if request in self.waiting:
            self.waiting.remove(request)
        if request.status.finished:
            return
        request.status = status
        request.metrics.finished_time = self.clock()
        self._forks.pop(request.request_id, None)
        if request.program_id is not None and status is not RequestStatus.FINISHED_ABORTED:
            ttl = self.policy.keep_kv_for(request, self.view(0))
            if ttl > 0:
                self.pins.hold(request.program_id, request, self.clock() + ttl)
        self.kv.free(request)
        self.preemptor.release(request)
        self.policy.on_finish(request)
