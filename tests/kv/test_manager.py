"""KVCacheManager without a model: prefix matches and what they take, a peek that changes
nothing, copy-on-write after a fork, freeing, and a swap round trip through a real (small)
PagedKVCache on the CPU with each codec."""

from __future__ import annotations

import pytest
import torch

from ember.kv.cache import PagedKVCache
from ember.kv.manager import KVCacheManager
from ember.kv.swap import SwapPreemptor
from ember.request import Request
from ember.sampling_params import SamplingParams

BS = 4


def request(rid: str, tokens, **params) -> Request:
    return Request(rid, list(tokens), SamplingParams(**params), max_tokens=16)


def run_prefill(kv: KVCacheManager, req: Request) -> None:
    """What a step does for a whole prompt: room for it, then its K/V counted and its full blocks cached."""
    assert kv.allocate_slots(req, req.num_tokens - req.num_computed_tokens)
    req.num_computed_tokens = req.num_tokens
    kv.cache_full_blocks(req)


def evictable(kv: KVCacheManager) -> list[int]:
    """The LRU order of cached free blocks (the next allocation evicts from the front)."""
    return list(kv.pool._evictable)


def test_match_and_take_cached_share_the_blocks():
    kv = KVCacheManager(8, BS)
    a = request("a", range(10))
    run_prefill(kv, a)
    assert kv.pool.num_cached_blocks == 2  # two full blocks; the partial third is not cached
    b = request("b", list(range(8)) + [50, 51, 52])
    blocks, hit = kv.match_prefix(b)
    assert (blocks, hit) == (a.block_ids[:2], 8)
    assert (kv.stats.requests, kv.stats.queries, kv.stats.hits, kv.stats.requests_hit) == (1, 11, 8, 1)
    kv.take_cached(b, blocks, hit)
    assert b.block_ids == a.block_ids[:2] and b.num_computed_tokens == 8
    assert [kv.pool.ref_counts[x] for x in a.block_ids] == [2, 2, 1]
    # The last token is never a hit: its logits must be computed.
    c = request("c", range(8))
    assert kv.match_prefix(c) == (a.block_ids[:1], 4)
    # Another first block, or prompt logprobs asked for: no hit, and nothing counted for the latter.
    assert kv.match_prefix(request("d", [99] + list(range(1, 10))))[1] == 0
    before = kv.stats.requests
    assert kv.match_prefix(request("e", range(10), prompt_logprobs=0)) == ([], 0)
    assert kv.stats.requests == before
    kv.pool.check_consistency()


def test_peek_prefix_has_no_side_effects():
    kv = KVCacheManager(8, BS)
    a = request("a", range(13))
    run_prefill(kv, a)
    kv.free(a)  # its three full blocks stay cached, free to evict, in LRU order
    order, refs, stats = evictable(kv), list(kv.pool.ref_counts), (kv.stats.requests, kv.stats.queries)
    b = request("b", list(range(12)) + [7])
    assert kv.peek_prefix(b) == 12
    assert kv.peek_prefix(request("c", range(13), prompt_logprobs=1)) == 0
    assert evictable(kv) == order and kv.pool.ref_counts == refs
    assert (kv.stats.requests, kv.stats.queries) == stats and b.block_ids == [] and b.num_computed_tokens == 0
    # What match_prefix then finds is what the peek said.
    assert kv.match_prefix(b)[1] == 12 and kv.stats.requests == stats[0] + 1


def test_copy_on_write_after_a_fork():
    kv = KVCacheManager(8, BS)
    parent = request("p", range(6))  # one full block and a partial one
    run_prefill(kv, parent)
    child = request("c", range(6))
    kv.fork(parent, child)
    full, partial = parent.block_ids
    assert child.block_ids == [full, partial] and child.num_computed_tokens == 6
    assert kv.pool.ref_counts[full] == kv.pool.ref_counts[partial] == 2
    # The child writes into the shared partial block: it gets a copy first.
    assert kv.allocate_slots(child, 1)
    copy = child.block_ids[1]
    assert copy != partial and kv.pending_copies == [(partial, copy)]
    assert (kv.pool.ref_counts[full], kv.pool.ref_counts[partial], kv.pool.ref_counts[copy]) == (2, 1, 1)
    # The parent now holds its partial block alone: no copy.
    assert kv.allocate_slots(parent, 1) and parent.block_ids == [full, partial]
    assert kv.take_pending_copies() == [(partial, copy)] and kv.pending_copies == []
    # A fork at a block boundary shares only full blocks: the next token needs a new block, no copy.
    kv2 = KVCacheManager(8, BS)
    p2, c2 = request("p2", range(8)), request("c2", range(8))
    run_prefill(kv2, p2)
    kv2.fork(p2, c2)
    assert kv2.allocate_slots(c2, 1) and kv2.pending_copies == [] and len(c2.block_ids) == 3
    kv.pool.check_consistency()
    kv2.pool.check_consistency()


def test_free_restores_the_pool_and_drops_copies_into_freed_blocks():
    kv = KVCacheManager(6, BS)
    parent = request("p", range(6))
    run_prefill(kv, parent)
    child = request("c", range(6))
    kv.fork(parent, child)
    assert kv.allocate_slots(child, 1) and kv.pending_copies
    kv.free(child)  # the queued copy would write into a block nobody holds now
    assert kv.pending_copies == [] and child.block_ids == []
    kv.free(parent)
    assert kv.pool.num_used_blocks == 0 and kv.pool.num_free_blocks == 6
    assert kv.pool.num_cached_blocks == 1  # the full block stays findable
    kv.pool.check_consistency()
    assert not kv.allocate_slots(request("big", range(30)), 30)  # 8 blocks > 6: refused, nothing taken
    assert kv.pool.num_used_blocks == 0


def write_tokens(cache: PagedKVCache, req: Request, start: int, end: int, seed: int) -> None:
    """Random K/V for positions start..end-1 of a request, into its slots in every layer."""
    g = torch.Generator().manual_seed(seed)
    slots = torch.tensor([req.block_ids[p // BS] * BS + p % BS for p in range(start, end)])
    for layer in range(cache.num_layers):
        k = torch.randn(end - start, cache.num_kv_heads, cache.head_dim, generator=g)
        v = torch.randn(end - start, cache.num_kv_heads, cache.head_dim, generator=g)
        cache.write(layer, slots, k, v)


def contents(cache: PagedKVCache, req: Request, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    table = torch.tensor(req.block_ids)
    return [cache.gather(layer, table, length) for layer in range(cache.num_layers)]


def assert_same(a, b) -> None:
    for (ka, va), (kb, vb) in zip(a, b):
        assert torch.equal(ka, kb) and torch.equal(va, vb)


@pytest.mark.parametrize("codec", ["auto", "int8", "fp8-e4m3"])
def test_swap_round_trip(codec):
    cache = PagedKVCache.create(2, 8, BS, num_kv_heads=2, head_dim=8, kv_cache_dtype=codec)
    kv = KVCacheManager(8, BS)
    swap = SwapPreemptor(cache, num_host_blocks=4)
    req = request("r", range(10))
    run_prefill(kv, req)
    write_tokens(cache, req, 0, 10, seed=1)
    saved = contents(cache, req, 10)
    swap.preempt(req, kv)
    assert req.block_ids == [] and req.num_computed_tokens == 0 and kv.pool.num_used_blocks == 0
    assert swap.num_swapped_out == 1 and swap.num_host_blocks_used == 3
    # Someone else overwrites the device blocks meanwhile.
    other = request("o", [90 + i for i in range(30)])
    run_prefill(kv, other)
    write_tokens(cache, other, 0, 30, seed=2)
    kv.free(other)
    assert swap.resume(req, kv)
    assert req.num_computed_tokens == 10 and len(req.block_ids) == 3 and swap.num_host_blocks_used == 0
    assert_same(contents(cache, req, 10), saved)
    kv.free(req)
    kv.pool.check_consistency()
    assert kv.pool.num_used_blocks == 0


def test_swap_keeps_a_copy_on_write_that_has_not_run_yet():
    """A forked child preempted after its copy-on-write was queued (before the step ran it)."""
    cache = PagedKVCache.create(1, 8, BS, num_kv_heads=2, head_dim=8)
    kv = KVCacheManager(8, BS)
    swap = SwapPreemptor(cache, num_host_blocks=4)
    parent, child = request("p", range(6)), request("c", range(6))
    run_prefill(kv, parent)
    write_tokens(cache, parent, 0, 6, seed=3)
    kv.fork(parent, child)
    assert kv.allocate_slots(child, 1) and kv.pending_copies
    swap.preempt(child, kv)
    assert kv.pending_copies == []
    assert swap.resume(child, kv) and child.num_computed_tokens == 6
    assert_same(contents(cache, child, 6), contents(cache, parent, 6))


def test_swap_falls_back_to_recompute_when_the_host_pool_is_full():
    cache = PagedKVCache.create(1, 8, BS, num_kv_heads=2, head_dim=8)
    kv = KVCacheManager(8, BS)
    swap = SwapPreemptor(cache, num_host_blocks=2)
    req = request("r", range(10))  # three blocks to save, two host blocks
    run_prefill(kv, req)
    swap.preempt(req, kv)
    assert swap.num_swapped_out == 0 and req.num_computed_tokens == 0 and kv.pool.num_used_blocks == 0
    assert swap.resume(req, kv) and req.num_computed_tokens == 0  # nothing to bring back: recompute
