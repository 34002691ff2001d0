"""Swap preemption: a preempted request's KV blocks move to a host-memory pool and back.

The host pool is preallocated (`swap_space`), so a swap is a gather into it and a scatter
back, per layer, in one copy each way. When the host pool is full the request falls back to
recompute (its blocks are simply freed).
"""

from __future__ import annotations

from collections import deque

import torch

from ember.config import parse_bytes
from ember.engine.request import Request
from ember.engine.scheduler import Preemptor
from ember.kv.cache import PagedKVCache
from ember.kv.manager import KVCacheManager


class HostKVPool:
    def __init__(self, like: PagedKVCache, num_blocks: int):
        shape = (num_blocks, like.block_size, like.num_kv_heads, like.head_dim)
        pin = torch.cuda.is_available() and like.k[0].is_cuda  # pinned memory only helps device copies
        self.k = [torch.empty(shape, dtype=t.dtype, pin_memory=pin) for t in like.k]
        self.v = [torch.empty(shape, dtype=t.dtype, pin_memory=pin) for t in like.v]
        self.free = deque(range(num_blocks))
        self.num_blocks = num_blocks


class SwapPreemptor(Preemptor):
    def __init__(self, engine):
        cache: PagedKVCache = engine.kv_cache
        mc = engine.model_config
        block_bytes = PagedKVCache.bytes_per_block(mc.num_layers, cache.block_size, mc.num_kv_heads, mc.head_dim,
                                                   cache.k[0].dtype)
        self.cache = cache
        self.host = HostKVPool(cache, max(1, parse_bytes(engine.config.swap_space) // block_bytes))
        self.swapped: dict[str, tuple[list[int], int]] = {}  # request -> (host blocks, computed tokens)
        self.num_swapped_out = self.num_swapped_in = 0

    def preempt(self, request: Request, kv: KVCacheManager) -> None:
        # Only blocks holding computed tokens are worth keeping.
        keep = kv.blocks_needed(request.num_computed_tokens)
        if keep == 0 or keep > len(self.host.free):
            return super().preempt(request, kv)  # nothing to save, or no room: recompute instead
        host = [self.host.free.popleft() for _ in range(keep)]
        src = torch.tensor(request.block_ids[:keep], dtype=torch.long)
        dst = torch.tensor(host, dtype=torch.long)
        for layer in range(len(self.cache.k)):
            self.host.k[layer][dst] = self.cache.k[layer][src]
            self.host.v[layer][dst] = self.cache.v[layer][src]
        self.swapped[request.request_id] = (host, request.num_computed_tokens)
        self.num_swapped_out += 1
        kv.free(request)
        request.num_computed_tokens = 0

    def resume(self, request: Request, kv: KVCacheManager) -> bool:
        entry = self.swapped.get(request.request_id)
        if entry is None:
            return True  # it was recomputed: nothing to bring back
        host, computed = entry
        if kv.blocks_needed(request.num_tokens) > kv.pool.num_free_blocks:
            return False  # wait until the whole sequence fits again
        blocks = kv.pool.allocate(len(host))
        src = torch.tensor(host, dtype=torch.long)
        dst = torch.tensor(blocks, dtype=torch.long)
        for layer in range(len(self.cache.k)):
            self.cache.k[layer][dst] = self.host.k[layer][src]
            self.cache.v[layer][dst] = self.host.v[layer][src]
        request.block_ids = blocks
        request.num_computed_tokens = computed
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
