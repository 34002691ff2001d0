"""KIVI's residual in a scratch pool (kv/scratch.py), without a model: a slot per open block
instead of one per block, read and written exactly as the slot-per-block layout would; slots
come back when a block fills (after its pass), when a request holding a partial block is freed,
when a block is reused; copy-on-write gives each copy its own residual; swap takes it to the
host and back; the chunk cache keeps a chunk's partial last block's slot while it indexes it;
an exhausted pool grows instead of failing."""

from __future__ import annotations

import pytest
import torch

from ember.kv.cache import PagedKVCache
from ember.kv.chunks import ChunkCache
from ember.kv.manager import KVCacheManager
from ember.kv.swap import SwapPreemptor
from ember.request import Request
from ember.sampling_params import SamplingParams

BS, HKV, D = 4, 2, 32


def _rows(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    chan = torch.randn(HKV, D, generator=g) * 3
    return torch.randn(n, HKV, D, generator=g) * (1 + chan.abs()) + chan


def wired(num_blocks: int, num_scratch: int | None = 2, name: str = "kivi4"):
    """A manager and a pooled cache connected as the engine connects them."""
    kv = KVCacheManager(num_blocks, BS)
    cache = PagedKVCache.create(1, num_blocks, BS, HKV, D, kv_cache_dtype=name, num_scratch=num_scratch)
    kv.pool.on_release = cache.release
    return kv, cache


def request(rid: str, n: int) -> Request:
    return Request(rid, list(range(100, 100 + n)), SamplingParams(), max_tokens=16)


def step(kv, cache, req: Request, n: int, seed: int):
    """One pass: room for n more tokens, their rows written (every layer), the pass settled."""
    assert kv.allocate_slots(req, n)
    cache.copy_blocks(kv.take_pending_copies())
    start = req.num_cached_tokens
    pos = torch.arange(start, start + n)
    slots = torch.tensor(req.block_ids)[pos // BS] * BS + pos % BS
    k, v = _rows(n, seed), _rows(n, seed + 1000)
    for layer in range(cache.num_layers):
        cache.write(layer, slots, k, v)
    cache.settle()
    req.num_computed_tokens += n
    return k, v


def contents(cache, req: Request):
    table = torch.tensor(req.block_ids)
    return cache.gather(0, table, req.num_cached_tokens)


def test_pooled_reads_equal_the_slot_per_block_layout():
    """Three sequences written in chunks that split blocks, passes interleaved: every read (and
    every block tensor) equals a slot-per-block cache given the same writes, and after each pass
    only the sequences' partial last blocks hold a slot."""
    kv, pooled = wired(16, num_scratch=1)
    ref = PagedKVCache.create(1, 16, BS, HKV, D, kv_cache_dtype="kivi4")
    reqs = [request(f"r{i}", 40) for i in range(3)]
    seed = 0
    for sizes in ([5, 3, 9], [1, 4, 2], [6, 1, 1], [1, 1, 4]):
        for req, n in zip(reqs, sizes):
            seed += 1
            start = req.num_cached_tokens
            k, v = step(kv, pooled, req, n, seed)
            pos = torch.arange(start, start + n)
            ref.write(0, torch.tensor(req.block_ids)[pos // BS] * BS + pos % BS, k, v)
        partial = sorted(r.block_ids[r.num_cached_tokens // BS] for r in reqs if r.num_cached_tokens % BS)
        assert sorted(pooled.scratch.held()) == partial
    for req in reqs:
        table = torch.tensor(req.block_ids)
        a, b = pooled.gather(0, table, req.num_cached_tokens), ref.gather(0, table, req.num_cached_tokens)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for name in pooled.block_names:
        assert torch.equal(pooled.layers[0][name], ref.layers[0][name]), name
    assert pooled.scratch.num_grows >= 1  # one slot to start with: grown, never failed
    # the pool's tensors are what `scratch_bytes` counts
    assert pooled.scratch_bytes() == (pooled.scratch.num_slots + pooled.scratch.num_pass) * pooled.codec.bytes_per_scratch_slot()


def test_a_freed_partial_block_gives_its_slot_back():
    """Finished, aborted or preempted by recompute: the request's blocks are freed, and its
    partial last block's slot comes back (the pool's free count returns to full)."""
    kv, cache = wired(8, num_scratch=2)
    a, b = request("a", 20), request("b", 20)
    step(kv, cache, a, 6, 1)
    step(kv, cache, b, 3, 2)
    assert cache.scratch.num_used == 2
    kv.free(a)
    assert cache.scratch.num_used == 1
    kv.free(b)
    assert cache.scratch.num_free == cache.scratch.num_slots and cache.scratch.held() == {}


def test_copy_on_write_gives_each_copy_its_own_residual():
    """n > 1: siblings share the partial block until one writes into it; the copy gets a slot
    of its own holding the same residual, and later writes into either leave the other's alone."""
    kv, cache = wired(8)
    parent, child = request("p", 20), request("c", 20)
    step(kv, cache, parent, 6, 1)
    kv.fork(parent, child)
    assert cache.scratch.num_used == 1  # one shared partial block
    before = contents(cache, parent)
    k_child, _ = step(kv, cache, child, 1, 2)  # copy-on-write of block 1
    assert parent.block_ids[1] != child.block_ids[1]
    held = cache.scratch.held()
    assert held[parent.block_ids[1]] != held[child.block_ids[1]]
    got = contents(cache, child)
    assert torch.equal(got[0][:6], before[0]) and torch.equal(got[0][6], k_child[0])
    step(kv, cache, parent, 1, 3)
    assert torch.equal(contents(cache, child)[0], got[0])
    assert torch.equal(contents(cache, parent)[0][:6], before[0])
    kv.free(parent), kv.free(child)
    assert cache.scratch.held() == {}


def test_swap_takes_the_residual_to_the_host_and_back():
    kv, cache = wired(8)
    swap = SwapPreemptor(cache, num_host_blocks=4)
    req = request("r", 20)
    step(kv, cache, req, 6, 1)
    saved = contents(cache, req)
    swap.preempt(req, kv)
    assert cache.scratch.held() == {} and len(swap.host.cache.scratch.held()) == 1
    other = request("o", 20)  # someone else takes (and writes) the device blocks and slots meanwhile
    step(kv, cache, other, 7, 2)
    kv.free(other)
    assert swap.resume(req, kv)
    got = contents(cache, req)
    assert torch.equal(got[0], saved[0]) and torch.equal(got[1], saved[1])
    assert swap.host.cache.scratch.held() == {} and list(cache.scratch.held()) == [req.block_ids[1]]
    step(kv, cache, req, 2, 3)  # decoding goes on: the block fills and quantizes as usual
    assert cache.scratch.held() == {}
    assert cache.layers[0]["k_full"][req.block_ids[1]].item() == 1


def test_a_chunk_keeps_its_partial_blocks_slot_while_indexed():
    """A chunk's last block is partial: while the chunk cache indexes it (reference count 0,
    evictable) it keeps its residual, so a later prompt reads the chunk's keys exactly; when the
    pool reuses the block, the slot comes back."""
    kv, cache = wired(4)
    chunks = ChunkCache(kv.pool, BS)
    tokens = tuple(range(6))
    (use,), _ = kv.reserve_chunks([tokens])
    slots = torch.tensor(use.blocks)[torch.arange(6) // BS] * BS + torch.arange(6) % BS
    k, v = _rows(6, 5), _rows(6, 6)
    cache.write(0, slots, k, v)
    cache.settle()
    kv.store_chunks([use], computed=True)
    assert kv.pool.num_used_blocks == 0 and list(cache.scratch.held()) == [use.blocks[1]]
    found = kv.chunks.lookup(tokens)
    assert found == use.blocks and torch.equal(cache.gather(0, torch.tensor(found), 6)[0][4:], k[4:])
    del chunks
    kv.pool.allocate(4)  # evicts everything, the chunk's blocks included
    assert cache.scratch.held() == {} and kv.chunks.lookup(tokens) is None


def test_compact_writes_fresh_blocks_and_keeps_one_slot():
    """A press's compaction writes the kept entries into fresh blocks in one pass: afterwards
    only the new partial last block holds a slot."""
    from ember.kv.press import KV_PRESSES
    from ember.kv.press.compact import compact

    kv, cache = wired(12)
    req = request("r", 40)
    step(kv, cache, req, 22, 1)
    assert compact(KV_PRESSES.create("streaming", 0.5), cache, kv, req)
    assert req.num_cached_tokens == 11
    assert list(cache.scratch.held()) == [req.block_ids[-1]]
    kv.free(req)
    assert cache.scratch.held() == {} and cache.scratch.num_free == cache.scratch.num_slots


def test_a_slots_tensor_reused_in_place_still_opens_its_blocks():
    """Every layer of a pass opens the same slots tensor (checked once); one refilled in place
    for the next pass is opened again, and a write into a block with no slot is refused rather
    than landing in another block's residual."""
    kv, cache = wired(8)
    slots = torch.arange(2)
    cache.write(0, slots, _rows(2, 1), _rows(2, 2))
    slots.add_(BS)  # the next pass, same tensor: block 1
    cache.write(0, slots, _rows(2, 3), _rows(2, 4))
    assert sorted(cache.scratch.held()) == [0, 1]
    tensors = cache.layers[0]
    with pytest.raises(RuntimeError, match="without a residual slot"):
        cache.codec.write(tensors, torch.tensor([3 * BS]), _rows(1, 5), _rows(1, 6))


def test_open_under_inference_mode():
    """Evaluation runs under torch.inference_mode (its tensors track no version): pooled and
    slot-per-block caches alike."""
    with torch.inference_mode():
        for num_scratch in (1, None):
            cache = PagedKVCache.create(1, 8, BS, HKV, D, kv_cache_dtype="kivi4", num_scratch=num_scratch)
            slots = torch.arange(BS + 2)
            for _ in range(2):  # the same slots twice (two layers' worth): opened once
                cache.write(0, slots, _rows(BS + 2, 1), _rows(BS + 2, 2))
            got = cache.gather(0, torch.tensor([0, 1]), BS + 2)[0]
            assert torch.equal(got[BS:], _rows(BS + 2, 1)[BS:])
            if num_scratch:
                assert cache.scratch.held() == {0: -2, 1: 0}  # block 0: a pass slot; 1: an open one
