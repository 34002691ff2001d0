"""The Policy seam: which waiting request goes next, whether it may start, and who gives way.

The scheduler keeps the mechanics (token budget, KV blocks, queues) and asks the policy at
each decision; a policy sees requests and a read-only view of the scheduler, never the
mutable state, so the same policy runs under the engine and under a simulator.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable

from ember.registry import Registry
from ember.request import Request


class Admission(enum.Enum):
    ADMIT = "admit"  # try to start it now (the scheduler still checks it fits)
    SKIP = "skip"  # leave it waiting; try the next one
    STOP = "stop"  # admit nothing more this step


class PreemptReason(enum.Enum):
    KV_PRESSURE = "kv_pressure"  # a running request needs a block and none is free
    PRIORITY = "priority"  # a waiting request could not be admitted; preempting may make room


@dataclass(frozen=True)
class SchedulerView:
    """What an admission decision may look at. Reading it changes nothing."""
    free_blocks: int  # blocks an allocation could take now (free or cached-evictable)
    total_blocks: int  # the pool's size
    block_size: int
    token_budget: int  # tokens left in this step
    max_num_seqs: int
    max_num_batched_tokens: int  # a step's whole token budget
    running: tuple[Request, ...]
    peek_prefix: Callable[[Request], int] = field(repr=False)  # tokens of the request already cached
    clock: Callable[[], float] = field(repr=False, default=lambda: 0.0)  # the scheduler's clock
    pinned_programs: frozenset = frozenset()  # programs whose last turn's KV is pinned (Policy.keep_kv_for)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)


class Policy:
    """Options come from the EngineConfig (None: every option at its default), so a policy's
    flags are EngineConfig fields like every other knob."""
    name = ""

    def __init__(self, config=None):
        self.config = config

    def on_arrival(self, request: Request) -> None:
        """Called when a request enters the waiting queue for the first time."""

    def order(self, waiting: list[Request], view: SchedulerView) -> list[Request]:
        """Waiting requests in the order they should be admitted."""
        return waiting

    def admit(self, request: Request, view: SchedulerView) -> Admission:
        """Whether the next waiting request (in `order`) may start now."""
        return Admission.ADMIT

    def victim(self, running: list[Request], reason: PreemptReason, waiting: Request | None = None) -> Request | None:
        """The running request to preempt, or None to preempt nothing.

        KV_PRESSURE: a running request needs a block (it is among `running`); a victim must be named.
        PRIORITY: `waiting` could not be admitted; None leaves it waiting.
        """
        raise NotImplementedError

    def on_step(self, scheduled: list[tuple[Request, int]]) -> None:
        """Called with (request, tokens computed) after each step, once its sampled tokens are
        appended (`output_token_ids` includes this step's token): fair policies charge here."""

    def on_finish(self, request: Request) -> None:
        """Called once when a request finishes or is aborted."""

    def keep_kv_for(self, request: Request, view: SchedulerView) -> float:
        """Seconds the cached KV of a request that just finished stays pinned (not evictable)
        for its program's next turn; 0 lets it go to the prefix cache's LRU as usual."""
        return 0.0


POLICIES: Registry[Policy] = Registry("scheduling policy")
