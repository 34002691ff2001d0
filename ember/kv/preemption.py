"""Preemptor: how a preempted request gives back its KV blocks, and how it gets them back.

The default recomputes: the blocks are freed and the request's tokens are computed again
when it is admitted next. `swap.py` keeps the blocks' contents in host memory instead, and
`fastswitch.py` does so in few large copies, off the step. Each is registered by name
(`--preemption`) and built from the cache and the number of host blocks.
"""

from __future__ import annotations

from ember.kv.manager import KVCacheManager
from ember.registry import Registry
from ember.request import Request


class Preemptor:
    def preempt(self, request: Request, kv: KVCacheManager) -> None:
        kv.free(request)
        request.num_computed_tokens = request.num_dropped_tokens = 0

    def resume(self, request: Request, kv: KVCacheManager) -> bool:
        """Called before a preempted request is admitted again; False if it cannot come back yet."""
        return True

    def in_flight(self, request: Request) -> bool:
        """Its KV is on its way back (resume said not yet, but no room is missing): the
        scheduler passes over it rather than making room for it."""
        return False

    def settle(self) -> bool:
        """Wait for every copy under way to land; True if there was one (a step that scheduled
        nothing calls this instead of taking itself for stuck)."""
        return False

    def release(self, request: Request) -> None:
        """Drop anything held for a request that will not come back (finished or aborted)."""


PREEMPTORS: Registry[Preemptor] = Registry("preemption")


@PREEMPTORS.register("recompute")
def _recompute(cache, num_host_blocks: int) -> Preemptor:
    return Preemptor()


def preemption_names() -> list[str]:
    from ember.kv import fastswitch, swap  # noqa: F401  (register them)
    return PREEMPTORS.names()


def make_preemptor(name: str, cache, num_host_blocks: int) -> Preemptor:
    preemption_names()
    return PREEMPTORS.create(name, cache, num_host_blocks)
