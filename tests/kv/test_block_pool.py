"""BlockPool without a model: allocation, reference counts, the prefix-cache index and the
LRU order in which cached free blocks are reused; the pool's invariants after every operation."""

from __future__ import annotations

import random

import pytest

from ember.kv.block_pool import BlockPool, NoFreeBlocks


class CheckedPool(BlockPool):
    """A BlockPool that checks its invariants after every operation that changes it."""

    def allocate(self, n):
        blocks = super().allocate(n)
        self.check_consistency()
        return blocks

    def share(self, blocks):
        super().share(blocks)
        self.check_consistency()

    def free(self, blocks):
        super().free(blocks)
        self.check_consistency()

    def cache(self, block, block_hash, tokens):
        super().cache(block, block_hash, tokens)
        self.check_consistency()

    def reset_cache(self):
        super().reset_cache()
        self.check_consistency()


def test_allocate_and_free():
    pool = CheckedPool(4)
    a = pool.allocate(3)
    assert len(set(a)) == 3 and [pool.ref_counts[b] for b in a] == [1, 1, 1]
    assert (pool.num_free_blocks, pool.num_used_blocks, pool.usage()) == (1, 3, 0.75)
    with pytest.raises(NoFreeBlocks, match="asked for 2 KV blocks, 1 free"):
        pool.allocate(2)
    assert pool.num_free_blocks == 1  # a refused allocation takes nothing
    pool.free(a)
    assert pool.num_free_blocks == 4 and pool.num_used_blocks == 0
    with pytest.raises(RuntimeError, match="freed more often than allocated"):
        pool.free([a[0]])
    with pytest.raises(ValueError, match="at least one block"):
        BlockPool(0)


def test_reference_counts_keep_a_shared_block_in_use():
    pool = CheckedPool(2)
    (b,) = pool.allocate(1)
    pool.share([b])
    pool.share([b])
    assert pool.ref_counts[b] == 3
    pool.free([b])
    pool.free([b])
    assert pool.ref_counts[b] == 1 and pool.num_free_blocks == 1  # still held by one owner
    pool.free([b])
    assert pool.ref_counts[b] == 0 and pool.num_free_blocks == 2


def test_prefix_cache_hits_are_verified_against_the_tokens():
    pool = CheckedPool(4)
    (b,) = pool.allocate(1)
    pool.cache(b, 111, (1, 2, 3, 4))
    assert pool.lookup(111, (1, 2, 3, 4)) == b
    assert pool.lookup(111, (1, 2, 3, 5)) is None  # same hash, other tokens: a collision is no hit
    assert pool.lookup(222, (1, 2, 3, 4)) is None
    (other,) = pool.allocate(1)
    pool.cache(other, 111, (1, 2, 3, 4))  # a duplicate stays uncached: the first writer wins
    assert pool.lookup(111, (1, 2, 3, 4)) == b and pool.block_hash[other] is None
    # Freed, the cached block stays findable; shared again, it is in use again.
    pool.free([b, other])
    assert pool.lookup(111, (1, 2, 3, 4)) == b and pool.num_cached_blocks == 1
    assert pool.num_free_blocks == 4  # cached but unused blocks count as free
    pool.share([b])
    assert pool.ref_counts[b] == 1 and pool.num_free_blocks == 3


def test_plain_free_blocks_go_before_cached_ones_then_least_recently_freed_first():
    pool = CheckedPool(5)
    blocks = pool.allocate(5)
    for i, b in enumerate(blocks[:3]):
        pool.cache(b, 100 + i, (i,))
    # Freed in the order 2, 0, 1: that is the eviction order; the two uncached ones go first.
    pool.free([blocks[2]])
    pool.free([blocks[0]])
    pool.free([blocks[1]])
    pool.free(blocks[3:])
    assert sorted(pool.allocate(2)) == sorted(blocks[3:]) and pool.num_evictions == 0
    assert pool.allocate(1) == [blocks[2]]
    assert pool.lookup(102, (2,)) is None and pool.num_evictions == 1  # evicted: no longer findable
    # A hit moves a block out of the LRU; freed again it becomes the most recently freed.
    pool.share([blocks[0]])
    pool.free([blocks[0]])
    assert pool.allocate(1) == [blocks[1]]
    assert pool.allocate(1) == [blocks[0]]
    assert pool.num_evictions == 3 and pool.num_cached_blocks == 0


def test_reset_cache_forgets_only_unused_blocks():
    pool = CheckedPool(3)
    held, freed = pool.allocate(2)
    pool.cache(held, 1, (1,))
    pool.cache(freed, 2, (2,))
    pool.free([freed])
    pool.reset_cache()
    assert pool.lookup(1, (1,)) == held and pool.lookup(2, (2,)) is None
    assert pool.num_free_blocks == 2 and pool.num_evictions == 0


def test_consistency_check_catches_a_broken_pool():
    pool = BlockPool(2)
    pool.ref_counts[0] = 1  # held, yet still on the free list
    with pytest.raises(AssertionError, match="block 0"):
        pool.check_consistency()


def test_random_operations_keep_every_block_in_one_place():
    """Allocate, share, cache and free at random against a model of the reference counts."""
    rng = random.Random(7)
    pool = CheckedPool(16)
    refs: dict[int, int] = {}
    hashes = iter(range(10**6))
    for _ in range(2000):
        held = [b for b, n in refs.items() if n > 0]
        op = rng.choice(["allocate", "share", "free", "free", "cache"])
        if op == "allocate" and pool.num_free_blocks:
            for b in pool.allocate(rng.randint(1, pool.num_free_blocks)):
                refs[b] = 1
        elif op == "share" and held:
            b = rng.choice(held)
            pool.share([b])
            refs[b] += 1
        elif op == "free" and held:
            b = rng.choice(held)
            pool.free([b])
            refs[b] -= 1
        elif op == "cache" and held:
            b = rng.choice(held)
            h = next(hashes)
            pool.cache(b, h, (h,))
        assert [pool.ref_counts[b] for b in range(16)] == [refs.get(b, 0) for b in range(16)]
        assert pool.num_used_blocks == sum(1 for n in refs.values() if n > 0)
