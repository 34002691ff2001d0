"""FastSwitch preemption (Shen et al. 2024; no public code): swaps as few large copies, swap-in
off the step, and host copies kept for the next swap of the same tokens.

- **Runs.** Host blocks are handed out in contiguous runs (first fit), so a copy
  (`PagedKVCache.transfer`: one slice per stretch where both sides are consecutive) is a few
  large ones. The device pool hands out ascending ids from its free list, so a request's
  blocks are often consecutive too; the plain swap takes whatever host blocks come first.
- **Swap-in off the step.** `resume` allocates the device blocks, moves the scratch data of
  its open block (KIVI's residual: slot bookkeeping the step also does) and starts the copy of
  the blocks' bytes on a background thread; the request is then `in_flight` (the scheduler
  passes over it and keeps the running batch going) until a later step finds the copy landed
  and admits it.
- **Reuse.** A full block never changes, so its host copy stays valid after the swap-in. It
  is kept, indexed by the chain hash of its tokens, and the next swap-out of the same request
  (priority churn) or of a later turn that begins with the same tokens copies only the blocks
  the host lacks. Kept copies give way, oldest first, when the host pool needs room. Blocks
  whose entries are not their tokens' exact KV (pressed, or blended chunks) are never kept.
- Swap-out stays synchronous: the blocks it frees are what the preemption was for.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ember.kv.cache import PagedKVCache, runs
from ember.kv.manager import KVCacheManager, chain_hash
from ember.kv.preemption import PREEMPTORS, Preemptor
from ember.request import Request


@dataclass
class FastSwitchStats:
    swapped_out: int = 0
    swapped_in: int = 0
    blocks_copied_out: int = 0
    blocks_reused: int = 0  # host copies that a swap-out did not have to make
    blocks_copied_in: int = 0
    seconds_out: float = 0.0  # on the step (swap-out)
    seconds_in: float = 0.0  # on the background thread (swap-in)
    runs_out: int = 0
    runs_in: int = 0


class HostBlocks:
    """The host pool's bookkeeping: reference counts, contiguous first-fit allocation, and the
    kept copies (reference count 0, still indexed by hash; least recently kept given up first)."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.refs = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.index: dict[int, int] = {}  # chain hash -> host block
        self.kept: OrderedDict[int, None] = OrderedDict()

    @property
    def num_available(self) -> int:
        return self.refs.count(0)

    def allocate(self, n: int) -> list[int] | None:
        """n blocks, in as few runs as the free space allows; kept copies are given up (oldest
        first) only when the free blocks alone are too few. None if even that is not enough."""
        free = [b for b in range(self.num_blocks) if self.refs[b] == 0 and b not in self.kept]
        if len(free) + len(self.kept) < n:
            return None
        while len(free) < n:
            block, _ = self.kept.popitem(last=False)
            self._unindex(block)
            free.append(block)
        free.sort()
        stretches: list[list[int]] = []
        for b in free:
            if stretches and b == stretches[-1][-1] + 1:
                stretches[-1].append(b)
            else:
                stretches.append([b])
        fits = [s for s in stretches if len(s) >= n]
        chosen = fits[0][:n] if fits else [b for s in sorted(stretches, key=len, reverse=True) for b in s][:n]
        for b in chosen:
            self.refs[b] = 1
        return chosen

    def take(self, block: int) -> None:
        """Hold an indexed copy again (a swap-out reusing it)."""
        self.refs[block] += 1
        self.kept.pop(block, None)

    def give_back(self, blocks: list[int]) -> None:
        for b in blocks:
            self.refs[b] -= 1
            if self.refs[b] == 0 and self.hash_of[b] is not None:
                self.kept[b] = None

    def add_index(self, block: int, block_hash: int) -> None:
        if block_hash in self.index:
            return  # an equal copy is indexed already
        self.index[block_hash], self.hash_of[block] = block, block_hash

    def _unindex(self, block: int) -> None:
        h = self.hash_of[block]
        if h is not None and self.index.get(h) == block:
            del self.index[h]
        self.hash_of[block] = None


@PREEMPTORS.register("fastswitch")
class FastSwitchPreemptor(Preemptor):
    def __init__(self, cache: PagedKVCache, num_host_blocks: int):
        self.cache, self.block_size = cache, cache.block_size
        from ember.kv.swap import HostKVPool

        self.host_cache = HostKVPool(cache, max(1, num_host_blocks)).cache
        self.host = HostBlocks(max(1, num_host_blocks))
        self.swapped: dict[str, tuple[list[int], int, int]] = {}  # request -> (host blocks, computed, dropped)
        self.inflight: dict[str, tuple[Future, list[int], KVCacheManager]] = {}  # swap-ins under way
        self.stats = FastSwitchStats()
        self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ember-swap-in")

    # --- hashes -------------------------------------------------------------------------------
    def _full_block_hashes(self, request: Request, num_blocks: int) -> list[int]:
        """Chain hashes of the request's first full blocks, or none when its entries are not
        the exact KV of its tokens (pressed or blended)."""
        if request.num_dropped_tokens or request.chunk_spans:
            return []
        tokens, bs, parent, out = request.all_token_ids, self.block_size, None, []
        for i in range(min(num_blocks, request.num_cached_tokens // bs)):
            parent = chain_hash(parent, tuple(tokens[i * bs:(i + 1) * bs]))
            out.append(parent)
        return out

    # --- Preemptor ----------------------------------------------------------------------------
    def preempt(self, request: Request, kv: KVCacheManager) -> None:
        keep = kv.blocks_needed(request.num_cached_tokens)
        if keep == 0:
            return super().preempt(request, kv)
        hashes = self._full_block_hashes(request, keep)
        host: list[int | None] = [self.host.index.get(h) for h in hashes] + [None] * (keep - len(hashes))
        missing = [i for i, b in enumerate(host) if b is None]
        reused = [b for b in host if b is not None]
        for b in reused:
            self.host.take(b)  # before allocating: a reused copy must not be given up for room
        fresh = self.host.allocate(len(missing)) if missing else []
        if fresh is None:
            self.host.give_back(reused)
            return super().preempt(request, kv)  # no room on the host: recompute instead
        start = time.perf_counter()
        own = set(request.block_ids)  # a copy-on-write queued this step must land before the read
        self.cache.copy_blocks([(src, dst) for src, dst in kv.pending_copies if dst in own])
        self.cache.transfer(self.host_cache, [request.block_ids[i] for i in missing], fresh)
        for i, b in zip(missing, fresh):
            host[i] = b
            if i < len(hashes):
                self.host.add_index(b, hashes[i])
        s = self.stats
        s.seconds_out += time.perf_counter() - start
        s.swapped_out += 1
        s.blocks_copied_out += len(fresh)
        s.blocks_reused += len(reused)
        s.runs_out += len(runs([request.block_ids[i] for i in missing], fresh))
        self.swapped[request.request_id] = (host, request.num_computed_tokens, request.num_dropped_tokens)
        kv.free(request)
        request.num_computed_tokens = request.num_dropped_tokens = 0

    def resume(self, request: Request, kv: KVCacheManager) -> bool:
        rid = request.request_id
        if rid in self.inflight:
            future, blocks, _ = self.inflight[rid]
            if not future.done():
                return False
            del self.inflight[rid]
            future.result()  # a failed copy raises here, on the engine thread
            host, computed, dropped = self.swapped.pop(rid)
            request.block_ids = blocks
            request.num_computed_tokens, request.num_dropped_tokens = computed, dropped
            self.host.give_back(host)
            self.host_cache.release([b for b in host if self.host.refs[b] == 0])  # host scratch slots
            self.stats.swapped_in += 1
            return True
        entry = self.swapped.get(rid)
        if entry is None:
            return True  # it was recomputed: nothing to bring back
        host, _, dropped = entry
        if kv.blocks_needed(request.num_tokens - dropped) > kv.pool.num_free_blocks:
            return False  # wait until the whole sequence fits again
        blocks = kv.pool.allocate(len(host))
        self.host_cache.transfer(self.cache, host, blocks, blocks=False)  # slots here, bytes off the step
        self.inflight[rid] = (self._copier.submit(self._copy_in, host, blocks), blocks, kv)
        return False

    def _copy_in(self, host: list[int], blocks: list[int]) -> None:
        start = time.perf_counter()
        self.host_cache.transfer(self.cache, host, blocks, scratch=False)
        s = self.stats
        s.seconds_in += time.perf_counter() - start
        s.blocks_copied_in += len(blocks)
        s.runs_in += len(runs(host, blocks))

    def in_flight(self, request: Request) -> bool:
        return request.request_id in self.inflight

    def settle(self) -> bool:
        for future, _, _ in self.inflight.values():
            future.exception()
        return bool(self.inflight)

    def release(self, request: Request) -> None:
        rid = request.request_id
        flight = self.inflight.pop(rid, None)
        if flight is not None:  # the copy must land before its device blocks go back
            future, blocks, kv = flight
            future.exception()
            kv.pool.free(blocks)
        entry = self.swapped.pop(rid, None)
        if entry is not None:
            self.host.give_back(entry[0])
            self.host_cache.release([b for b in entry[0] if self.host.refs[b] == 0])

    @property
    def num_host_blocks_used(self) -> int:
        return self.host.num_blocks - self.host.num_available
