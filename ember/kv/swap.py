"""Swap preemption: a preempted request's KV blocks move to a host-memory pool and back.

The host pool is preallocated (`swap_space`), so a swap is a gather into it and a scatter
back, one copy per tensor of each layer (codes and scales alike). When the host pool is full the request falls back to
recompute (its blocks are simply freed). The host pool is a PagedKVCache of its own, so a
block's scratch data (KIVI's residual of a partial block, kv/scratch.py) goes to a host
scratch slot and back with it.
"""

from __future__ import annotations

from collections import deque

import torch

from ember.kv.cache import PagedKVCache
from ember.kv.manager import KVCacheManager
from ember.kv.preemption import PREEMPTORS, Preemptor
from ember.request import Request


class HostKVPool:
    """Host blocks shaped like the device cache's (a PagedKVCache: the codec's tensors, and a
    scratch pool that starts as small as the device's and grows if swapped requests need more)."""

    def __init__(self, like: PagedKVCache, num_blocks: int):
        scratch = like.scratch.num_slots if like.scratch is not None and not like.scratch.identity else None
        self.cache = PagedKVCache(like.codec, like.num_layers, num_blocks, scratch, num_pass=1)
        self.free = deque(range(num_blocks))
        self.num_blocks = num_blocks

    @property
    def layers(self):
        return self.cache.layers


@PREEMPTORS.register("swap")
class SwapPreemptor(Preemptor):
    def __init__(self, cache: PagedKVCache, num_host_blocks: int):
        self.cache = cache
        self.host = HostKVPool(cache, max(1, num_host_blocks))
        self.swapped: dict[str, tuple[list[int], int, int]] = {}  # request -> (host blocks, computed, dropped tokens)
        self.num_swapped_out = self.num_swapped_in = 0

    def preempt(self, request: Request, kv: KVCacheManager) -> None:
        # Only blocks holding computed tokens are worth keeping.
        keep = kv.blocks_needed(request.num_cached_tokens)
        if keep == 0 or keep > len(self.host.free):
            return super().preempt(request, kv)  # nothing to save, or no room: recompute instead
        # A copy-on-write queued this step (not yet run) must land before the blocks are read.
        own = set(request.block_ids)
        self.cache.copy_blocks([(src, dst) for src, dst in kv.pending_copies if dst in own])
        host = [self.host.free.popleft() for _ in range(keep)]
        self.cache.transfer(self.host.cache, request.block_ids[:keep], host)
        self.swapped[request.request_id] = (host, request.num_computed_tokens, request.num_dropped_tokens)
        self.num_swapped_out += 1
        kv.free(request)
        request.num_computed_tokens = request.num_dropped_tokens = 0

    def resume(self, request: Request, kv: KVCacheManager) -> bool:
        entry = self.swapped.get(request.request_id)
        if entry is None:
            return True  # it was recomputed: nothing to bring back
        host, computed, dropped = entry
        if kv.blocks_needed(request.num_tokens - dropped) > kv.pool.num_free_blocks:
            return False  # wait until the whole sequence fits again
        blocks = kv.pool.allocate(len(host))
        self.host.cache.transfer(self.cache, host, blocks)
        request.block_ids = blocks
        request.num_computed_tokens, request.num_dropped_tokens = computed, dropped
        self.release(request)
        self.num_swapped_in += 1
        return True

    def release(self, request: Request) -> None:
        entry = self.swapped.pop(request.request_id, None)
        if entry is not None:
            self.host.cache.release(entry[0])  # host scratch slots go back with the host blocks
            self.host.free.extend(entry[0])

    @property
    def num_host_blocks_used(self) -> int:
        return self.host.num_blocks - len(self.host.free)
