"""One simulated engine: the engine's own Scheduler (policy, KV block manager, preemption) built
by the engine's builder, with a step-time model where the forward and the sampler would run.

A step is `schedule()` at its start, then, `predict(...)` seconds later, `update()` with one
token for every request that samples: a fixed token that is not EOS (the scheduler is built
without EOS ids), so each request runs to its output length as `ember bench --ignore-eos` runs do.

Layered prefill (`layer_groups` G > 1; scale-snu/layered-prefill): a step that schedules prompt
tokens runs as G sub-steps. Each takes the prompts through one group of layers (1/G of their
full-model cost) while the running decodes go through the whole model and each get a token; the
prompts sample their first token at the end of the last sub-step. New work is scheduled once
the group is done. A sub-step lasts t(0, decodes) + (t(prompts, 0) - t(0, 0)) / G by the
step-time model (the model has no per-layer terms, so a layer group is an even share).
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from ember.engine.profile import batch_composition
from ember.engine.scheduler import SchedulerOutput
from ember.request import RequestStatus
from ember.engine.scheduling_setup import build_scheduler
from ember.request import Request

SAMPLED_TOKEN = 1
MIN_STEP_S = 1e-6  # a model that predicts 0 (or less) must still move the clock forward


class Replica:
    def __init__(self, index: int, config, num_blocks: int, block_size: int, clock: Callable[[], float],
                 step_seconds: Callable[..., float], record_batches: bool = False, power=None,
                 layer_groups: int = 1):
        """`step_seconds(prefill_tokens, decode_rows, context_len_sum, num_seqs, prefill_attention)`: a
        step's duration;
        `power`: a PowerModel (power.py) that stretches capped steps and counts their energy."""
        self.index = index
        self.scheduler = build_scheduler(config, num_blocks, block_size, clock=clock)
        self.step_seconds = step_seconds
        self.batch: SchedulerOutput | None = None  # the step in flight
        self._samplers: list[Request] = []
        self.num_steps = 0
        self.busy_s = 0.0
        self.prefill_s = 0.0  # of busy_s, steps that computed prompt tokens
        self.power, self.energy_j = power, 0.0  # energy of the steps; idle time is counted at the end
        self.inbox: deque[Request] = deque()  # decode pool: requests whose KV is here, waiting for blocks
        self.batches: list[list[tuple[str, int]]] | None = [] if record_batches else None  # (id, tokens) per step
        self.compositions: list[tuple[int, ...]] | None = [] if record_batches else None
        self.layer_groups = layer_groups
        self._layered: _LayeredGroup | None = None  # a layered prefill under way

    @property
    def busy(self) -> bool:
        return self.batch is not None

    def start_step(self) -> float | None:
        """Schedule the next batch; how long it takes, or None when nothing can run."""
        if self._layered is not None:
            out, seconds = self._layered.next_step(self.scheduler)
            seqs, prefill, decode, context, attention = batch_composition(out)
        else:
            out = self.scheduler.schedule()
            if out.empty:
                return None
            seqs, prefill, decode, context, attention = batch_composition(out)
            if prefill and self.layer_groups > 1:
                self._layered = _LayeredGroup(out, self.layer_groups, self.step_seconds)
                out, seconds = self._layered.next_step(self.scheduler)
                seqs, prefill, decode, context, attention = batch_composition(out)
            else:
                seconds = self.step_seconds(prefill, decode, context, seqs, attention)
        self.batch, self._samplers = out, out.sample_requests  # read before update advances the counts
        seconds = max(seconds, MIN_STEP_S)
        if self.power is not None:
            seconds, watts = self.power.step(seconds, prefill)
            self.energy_j += watts * seconds
        self.num_steps += 1
        self.busy_s += seconds
        if prefill:
            self.prefill_s += seconds
        if self.batches is not None:
            self.batches.append([(r.request_id, n) for r, n in out.scheduled])
            self.compositions.append((seqs, prefill, decode, context, attention))
        return seconds

    def end_step(self) -> tuple[list[Request], list[Request]]:
        """The step's bookkeeping: (requests that got a token, requests that finished)."""
        out, self.batch = self.batch, None
        samplers = self._samplers
        finished = self.scheduler.update(out, dict.fromkeys([r.request_id for r in samplers], SAMPLED_TOKEN))
        if self._layered is not None and self._layered.done:
            self._layered = None
        return samplers, finished

    @property
    def layering(self) -> bool:
        """A layered prefill has sub-steps left: the next step continues it."""
        return self._layered is not None

    @property
    def has_work(self) -> bool:
        return bool(self.scheduler.num_unfinished or self.inbox)

    def receive(self, request: Request) -> list[Request]:
        """A request whose prompt's KV was computed elsewhere (a prefill replica) and sent here;
        it joins the queue once its blocks are allocated. Returns those that can never fit."""
        self.inbox.append(request)
        return self.take_inbox()

    def take_inbox(self) -> list[Request]:
        """Allocate blocks for the transferred KV of waiting arrivals, in order, while they fit with
        a block to spare for each queued request's next token (so the queue cannot deadlock)."""
        kv, s = self.scheduler.kv, self.scheduler
        never = []
        while self.inbox:
            request = self.inbox[0]
            need = kv.blocks_needed(request.num_computed_tokens)
            if kv.pool.num_free_blocks < need + len(s.waiting) + 1:
                if s.num_unfinished:
                    break  # blocks come back as running requests finish
                never.append(self.inbox.popleft())  # an empty cache cannot hold it
                continue
            request.block_ids = kv.pool.allocate(need)
            s.add(self.inbox.popleft())
        return never

    def abort_waiting(self) -> list[Request]:
        """Nothing runs and nothing waiting fits even in an empty cache: give those up, as the engine does."""
        from ember.request import RequestStatus

        stuck = list(self.scheduler.waiting)
        for request in stuck:
            self.scheduler.finish(request, RequestStatus.FINISHED_ABORTED)
        return stuck


class _LayeredGroup:
    """The sub-steps of one layered prefill: the scheduled prompts (sampling at the last one)
    and the decodes, each sub-step giving every decode still running a token."""

    def __init__(self, out: SchedulerOutput, groups: int, step_seconds):
        self.prompts = [(r, n) for r, n in out.scheduled if not _is_decode(r, n)]
        self.decodes = [r for r, n in out.scheduled if _is_decode(r, n)]
        self.forks = out.forks
        self.left, self.groups, self.step_seconds = groups, groups, step_seconds
        _, p, _, ctx, pairs = batch_composition(SchedulerOutput(self.prompts))
        self.prompt_share = (step_seconds(p, 0, ctx, len(self.prompts), pairs) - step_seconds(0, 0, 0, 0, 0)) / groups
        self._first = True

    @property
    def done(self) -> bool:
        return self.left == 0

    def next_step(self, scheduler) -> tuple[SchedulerOutput, float]:
        if not self._first:  # the slots of this sub-step's decode tokens (the first came with schedule())
            self.decodes = [r for r in self.decodes if r.status is RequestStatus.RUNNING
                            and scheduler.kv.allocate_slots(r, 1)]
        self._first = False
        self.left -= 1
        entries = [(r, 1) for r in self.decodes]
        seqs, _, decode, context, _ = batch_composition(SchedulerOutput(entries))
        seconds = (self.step_seconds(0, decode, context, seqs, 0) if entries else 0.0) + self.prompt_share
        if self.left == 0:
            return SchedulerOutput(entries + self.prompts, forks=self.forks), seconds
        return SchedulerOutput(entries), seconds


def _is_decode(request: Request, n: int) -> bool:
    return n == 1 and request.num_computed_tokens >= len(request.prompt_token_ids)
