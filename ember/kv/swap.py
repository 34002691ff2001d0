"""Swap preemption: a preempted request's KV blocks move to a host-memory pool and back.

The host pool is preallocated (`swap_space`), so a swap is a gather into it and a scatter
back, one copy per tensor of each layer (codes and scales alike). When the host pool is full the request falls back to
recompute (its blocks are simply freed).
"""

from __future__ import annotations

from collections import deque

import torch

from ember.kv.cache import PagedKVCache
from ember.kv.manager import KVCacheManager
from ember.kv.preemption import PREEMPTORS, Preemptor
from ember.request import Request


class HostKVPool:
    """Host blocks shaped like the device cache's, one dict of tensors per layer (the codec's)."""

    def __init__(self, like: PagedKVCache, num_blocks: int):
        self.layers = [like.codec.allocate(num_blocks) for _ in range(like.num_layers)]
        self.free = deque(range(num_blocks))
        self.num_blocks = num_blocks


def copy_blocks(src_layers, src: list[int], dst_layers, dst: list[int]) -> None:
    """Every tensor of every layer: dst_layers[..][dst] = src_layers[..][src]."""
    src_t, dst_t = torch.tensor(src, dtype=torch.long), torch.tensor(dst, dtype=torch.long)
    for a, b in zip(src_layers, dst_layers):
        for name, t in a.items():
            b[name][dst_t] = t[src_t]


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
        copy_blocks(self.cache.layers, request.block_ids[:keep], self.host.layers, host)
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
        copy_blocks(self.host.layers, host, self.cache.layers, blocks)
        request.block_ids = blocks
        request.num_computed_tokens, request.num_dropped_tokens = computed, dropped
        self.release(request)
        self.num_swapped_in += 1
        return True

    def release(self, request: Request) -> None:
        entry = self.swapped.pop(request.request_id, None)
        if entry is not None:
            self.host.free.extend(entry[0])

    @property
    def num_host_blocks_used(self) -> int:
        return self.host.num_blocks - len(self.host.free)
