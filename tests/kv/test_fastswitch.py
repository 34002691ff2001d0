"""FastSwitch preemption, model-free: copies by runs, swap-in off the step, host copies reused."""

from __future__ import annotations

import time

import pytest
import torch

from ember.kv.cache import PagedKVCache
from ember.kv.cache import copy_rows, runs
from ember.kv.fastswitch import FastSwitchPreemptor, HostBlocks
from ember.kv.manager import KVCacheManager
from tests.kv.test_manager import BS, assert_same, contents, request, run_prefill, write_tokens


def make_fastswitch(num_blocks: int, num_host_blocks: int):
    """A one-layer cache, its block manager (scratch slots released with freed blocks), FastSwitch."""
    cache = PagedKVCache.create(1, num_blocks, BS, num_kv_heads=2, head_dim=8)
    kv = KVCacheManager(num_blocks, BS)
    kv.pool.on_release = cache.release
    return cache, kv, FastSwitchPreemptor(cache, num_host_blocks=num_host_blocks)


def swap_in(fs: FastSwitchPreemptor, req, kv) -> None:
    """Resume as the scheduler does: the first call starts the copy, a later one admits."""
    assert not fs.resume(req, kv) and fs.in_flight(req)
    deadline = time.monotonic() + 10
    while not fs.resume(req, kv):
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert not fs.in_flight(req)


def test_runs_and_copy_rows_equal_a_gather():
    assert runs([3, 4, 5, 9, 10, 2], [0, 1, 2, 3, 4, 7]) == [(3, 0, 3), (9, 3, 2), (2, 7, 1)]
    assert runs([], []) == []
    g = torch.Generator().manual_seed(0)
    src = {"k": torch.randn(12, 2, 3, generator=g), "s": torch.randn(12, 1, generator=g).bfloat16(),
           "c": torch.randint(0, 255, (12, 5), generator=g, dtype=torch.uint8)}
    dst = {name: torch.zeros_like(t) for name, t in src.items()}
    a, b = [3, 4, 5, 9, 10, 2], [0, 1, 2, 3, 4, 7]
    copy_rows(src, a, dst, b)
    for name in src:
        assert torch.equal(dst[name][b], src[name][a])
        untouched = [i for i in range(12) if i not in b]
        assert not dst[name][untouched].any()


def test_host_allocation_is_contiguous_and_gives_up_kept_copies_last():
    host = HostBlocks(8)
    a, b = host.allocate(3), host.allocate(2)
    assert (a, b) == ([0, 1, 2], [3, 4])
    host.add_index(a[0], 111)
    host.give_back(a)  # block 0 kept (indexed), 1 and 2 free
    assert list(host.kept) == [0] and host.num_available == 6
    assert host.allocate(3) == [5, 6, 7]  # the first run long enough, the kept copy untouched
    assert host.allocate(2) == [1, 2] and list(host.kept) == [0]
    host.take(0)  # reused by a swap-out: no longer kept
    host.give_back([0])
    assert host.allocate(2) is None and 111 in host.index  # too few even with the kept one
    assert host.allocate(1) == [0] and 111 not in host.index and not host.kept


@pytest.mark.parametrize("codec", ["auto", "int8", "bfp4", "kivi4"])
def test_round_trip_off_the_step(codec):
    """(kivi4: the partial block's residual lives in a scratch slot, 2 for 8 blocks, and moves
    to a host slot and back with it.)"""
    cache = PagedKVCache.create(2, 8, BS, num_kv_heads=2, head_dim=32, kv_cache_dtype=codec, num_scratch=2)
    kv = KVCacheManager(8, BS)
    kv.pool.on_release = cache.release
    fs = FastSwitchPreemptor(cache, num_host_blocks=6)
    req = request("r", range(10))
    run_prefill(kv, req)
    write_tokens(cache, req, 0, 10, seed=1)
    cache.settle()  # the end of the step that wrote them
    saved = contents(cache, req, 10)
    fs.preempt(req, kv)
    assert req.block_ids == [] and req.num_computed_tokens == 0 and kv.pool.num_used_blocks == 0
    assert fs.stats.swapped_out == 1 and fs.stats.blocks_copied_out == 3 and fs.stats.runs_out == 1
    other = request("o", [90 + i for i in range(30)])  # someone overwrites the device blocks meanwhile
    run_prefill(kv, other)
    write_tokens(cache, other, 0, 30, seed=2)
    cache.settle()
    kv.free(other)
    swap_in(fs, req, kv)
    assert req.num_computed_tokens == 10 and len(req.block_ids) == 3 and fs.stats.runs_in == 1
    assert_same(contents(cache, req, 10), saved)
    # the two full blocks stay on the host (kept, free to give up), the partial one is free
    assert fs.num_host_blocks_used == 0 and len(fs.host.kept) == 2 and len(fs.host.index) == 2
    kv.free(req)
    fs.release(req)
    kv.pool.check_consistency()
    assert kv.pool.num_used_blocks == 0
    if cache.scratch is not None:  # every slot back, on the device and on the host
        cache.settle()
        assert cache.scratch.num_used == 0 and fs.host_cache.scratch.num_used == 0


def test_a_second_swap_copies_only_what_the_host_lacks():
    """Priority churn: swapped out, back, a few tokens more, out again: the full blocks' host
    copies from the first swap are reused; a later turn with the same beginning reuses them too."""
    cache, kv, fs = make_fastswitch(16, 10)
    req = request("r", range(10))
    run_prefill(kv, req)
    write_tokens(cache, req, 0, 10, seed=1)
    fs.preempt(req, kv)
    swap_in(fs, req, kv)
    for t in range(10, 15):  # decode 5 tokens
        req.output_token_ids.append(100 + t)
        assert kv.allocate_slots(req, 1)
        write_tokens(cache, req, t, t + 1, seed=t)
        req.num_computed_tokens += 1
    saved = contents(cache, req, 15)
    fs.preempt(req, kv)
    assert fs.stats.blocks_reused == 2 and fs.stats.blocks_copied_out == 3 + 2  # blocks 2 and 3 are new
    swap_in(fs, req, kv)
    assert_same(contents(cache, req, 15), saved)
    kv.free(req)
    fs.release(req)
    # a later turn that begins with the same 12 tokens: its first 3 blocks are on the host already
    turn = request("t", req.all_token_ids[:12] + [7, 7, 7])
    run_prefill(kv, turn)
    write_tokens(cache, turn, 0, 12, seed=99)  # (content is not compared: reuse is by token hash)
    before = fs.stats.blocks_copied_out
    fs.preempt(turn, kv)
    assert fs.stats.blocks_reused == 2 + 3 and fs.stats.blocks_copied_out == before + 1


def test_pressed_entries_are_never_reused():
    cache, kv, fs = make_fastswitch(16, 10)
    req = request("r", range(12))
    run_prefill(kv, req)
    req.num_dropped_tokens = 4  # a press removed 4 entries: the blocks no longer match the tokens
    fs.preempt(req, kv)
    assert not fs.host.index and fs.stats.blocks_copied_out == 2
    swap_in(fs, req, kv)
    assert req.num_dropped_tokens == 4 and fs.num_host_blocks_used == 0


def test_abort_during_swap_in_and_a_full_host_leak_nothing():
    cache, kv, fs = make_fastswitch(8, 3)
    req = request("r", range(10))
    run_prefill(kv, req)
    fs.preempt(req, kv)
    assert not fs.resume(req, kv) and fs.in_flight(req) and kv.pool.num_used_blocks == 3
    fs.release(req)  # aborted while its copy was under way
    assert not fs.in_flight(req) and kv.pool.num_used_blocks == 0
    kv.pool.check_consistency()
    assert fs.num_host_blocks_used == 0 and len(fs.host.kept) == 2  # its full blocks stay kept
    # a request needing all 3 host blocks gets them: kept copies give way
    big = request("b", [50 + i for i in range(12)])
    run_prefill(kv, big)
    fs.preempt(big, kv)
    assert fs.stats.swapped_out == 2 and fs.num_host_blocks_used == 3 and not fs.host.kept
    # and one that does not fit falls back to recompute, holding nothing
    third = request("c", [200 + i for i in range(5)])
    run_prefill(kv, third)
    fs.preempt(third, kv)
    assert fs.stats.swapped_out == 2 and third.num_computed_tokens == 0 and kv.pool.num_used_blocks == 0
    assert fs.resume(third, kv) and not fs.in_flight(third)
    assert not fs.settle()
