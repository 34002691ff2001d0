"""Preemptor: how a preempted request gives back its KV blocks, and how it gets them back.

The default recomputes: the blocks are freed and the request's tokens are computed again
when it is admitted next. `swap.py` keeps the blocks' contents in host memory instead.
"""

from __future__ import annotations

from ember.kv.manager import KVCacheManager
from ember.request import Request


class Preemptor:
    def preempt(self, request: Request, kv: KVCacheManager) -> None:
        kv.free(request)
        request.num_computed_tokens = request.num_dropped_tokens = 0

    def resume(self, request: Request, kv: KVCacheManager) -> bool:
        """Called before a preempted request is admitted again; False if it cannot come back yet."""
        return True

    def release(self, request: Request) -> None:
        """Drop anything held for a request that will not come back (finished or aborted)."""
