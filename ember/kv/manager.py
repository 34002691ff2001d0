"""KVCacheManager: which blocks each request holds, prefix-cache hits, and freeing.

The scheduler asks it for room; it never decides who runs. Prefix caching uses chained
block hashes: a full block's hash covers its own tokens and its parent's hash, so equal
hashes mean equal prefixes; every hit is also verified against the stored tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.kv.block_pool import BlockPool
from ember.request import Request


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of which found in the cache
    requests: int = 0
    requests_hit: int = 0


def chain_hash(parent: int | None, tokens: tuple[int, ...]) -> int:
    return hash((parent, tokens))


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.pool = BlockPool(num_blocks)
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.stats = PrefixCacheStats()
        self._hashes: dict[str, list[int]] = {}  # request id -> hashes of its cached full blocks
        self.pending_copies: list[tuple[int, int]] = []  # (source, destination) blocks to copy

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # --- prefix cache -------------------------------------------------------------------------
    def _cached_prefix(self, request: Request) -> list[int]:
        """Cached blocks that hold a prefix of the request's tokens; reads the index only.

        The last token is never taken from the cache: its logits must be computed.
        """
        tokens = request.all_token_ids
        limit = (len(tokens) - 1) // self.block_size
        blocks, parent = [], None
        for i in range(limit):
            chunk = tuple(tokens[i * self.block_size:(i + 1) * self.block_size])
            h = chain_hash(parent, chunk)
            block = self.pool.lookup(h, chunk)
            if block is None:
                break
            blocks.append(block)
            parent = h
        return blocks

    def _uses_prefix_cache(self, request: Request) -> bool:
        # prompt logprobs need the logits of every prompt position, so nothing may be skipped
        return self.enable_prefix_caching and request.params.prompt_logprobs is None

    def peek_prefix(self, request: Request) -> int:
        """Tokens `match_prefix` would find cached now, with no side effect: no stats, no
        references taken, no change to the eviction order (for policies that compare requests)."""
        if not self._uses_prefix_cache(request):
            return 0
        return len(self._cached_prefix(request)) * self.block_size

    def find_prefix(self, request: Request) -> tuple[list[int], int]:
        """Cached blocks that hold a prefix of the request's tokens, and how many tokens they
        cover (`take_cached` then takes them); not counted in `stats`, so an admission that
        fails and is retried next step counts once, when it succeeds (`record_lookup`)."""
        if not self._uses_prefix_cache(request):
            return [], 0
        blocks = self._cached_prefix(request)
        return blocks, len(blocks) * self.block_size

    def record_lookup(self, request: Request, hit: int) -> None:
        if not self._uses_prefix_cache(request):
            return
        self.stats.requests += 1
        self.stats.queries += request.num_tokens
        self.stats.hits += hit
        self.stats.requests_hit += hit > 0

    def match_prefix(self, request: Request) -> tuple[list[int], int]:
        """`find_prefix`, counted in `stats`."""
        blocks, hit = self.find_prefix(request)
        self.record_lookup(request, hit)
        return blocks, hit

    def take_cached(self, request: Request, blocks: list[int], num_tokens: int) -> None:
        self.pool.share(blocks)
        request.block_ids = list(blocks)
        request.num_computed_tokens = num_tokens

    def cache_full_blocks(self, request: Request) -> None:
        """Index the request's newly completed blocks so later requests can reuse them."""
        if not self.enable_prefix_caching or request.num_dropped_tokens:
            return  # after a drop, block i no longer holds tokens i*bs.. : nothing to index
        hashes = self._hashes.setdefault(request.request_id, [])
        full = request.num_computed_tokens // self.block_size
        if len(hashes) >= full:
            return
        tokens = request.token_slice(len(hashes) * self.block_size, full * self.block_size)
        parent = hashes[-1] if hashes else None
        for j, i in enumerate(range(len(hashes), full)):
            chunk = tuple(tokens[j * self.block_size:(j + 1) * self.block_size])
            parent = chain_hash(parent, chunk)
            hashes.append(parent)
            self.pool.cache(request.block_ids[i], parent, chunk)

    # --- allocation ---------------------------------------------------------------------------
    def can_allocate(self, request: Request, num_new_tokens: int, reserve: int = 0) -> bool:
        need = self.blocks_needed(request.num_cached_tokens + num_new_tokens) - len(request.block_ids)
        return need <= self.pool.num_free_blocks - reserve

    def allocate_slots(self, request: Request, num_new_tokens: int) -> bool:
        """Make room for `num_new_tokens` more tokens of K/V; False (and nothing taken) if there is none.

        Writing into a partly filled block that another sequence shares (after a fork) first
        copies it (copy-on-write); the copy is queued in `pending_copies` for the runner.
        """
        cached = request.num_cached_tokens  # blocks and slots count cache entries, not positions
        need = self.blocks_needed(cached + num_new_tokens) - len(request.block_ids)
        last_shared = (cached % self.block_size != 0 and num_new_tokens > 0
                       and self.pool.ref_counts[request.block_ids[cached // self.block_size]] > 1)
        total = max(need, 0) + last_shared
        if total > self.pool.num_free_blocks:
            return False
        if last_shared:
            i = cached // self.block_size
            (copy,) = self.pool.allocate(1)
            self.pending_copies.append((request.block_ids[i], copy))
            self.pool.free([request.block_ids[i]])
            request.block_ids[i] = copy
        if need > 0:
            request.block_ids.extend(self.pool.allocate(need))
        return True

    def take_pending_copies(self) -> list[tuple[int, int]]:
        copies, self.pending_copies = self.pending_copies, []
        return copies

    def drop_blocks(self, request: Request, indexes: list[int]) -> None:
        """Take whole blocks out of the request's cache (a sliding window, a token press).

        Only full blocks can go; the request keeps its positions, so what comes next is
        rotated as before and attends to the entries that remain.
        """
        full = request.num_cached_tokens // self.block_size
        indexes = sorted(set(indexes))
        if any(not 0 <= i < full for i in indexes):
            raise ValueError(f"block indexes {indexes} are not all among the request's {full} full blocks")
        drop = set(indexes)
        self.pool.free([request.block_ids[i] for i in reversed(indexes)])
        request.block_ids = [b for i, b in enumerate(request.block_ids) if i not in drop]
        request.num_dropped_tokens += len(indexes) * self.block_size
        self._hashes.pop(request.request_id, None)

    def can_reallocate(self, request: Request, num_entries: int) -> bool:
        """Would `reallocate` find room (counting the blocks only this request holds)?"""
        own = sum(1 for b in request.block_ids if self.pool.ref_counts[b] == 1)
        return self.blocks_needed(num_entries) <= self.pool.num_free_blocks + own

    def reallocate(self, request: Request, num_entries: int) -> list[int]:
        """Give the request fresh private blocks for `num_entries` entries in place of its own (a
        press compacting it; the caller writes them); its positions stay, and nothing of it is
        indexed in the prefix cache again. Its old blocks go back first, so this fits whenever
        `can_reallocate` says so; blocks the prefix cache holds stay cached for others."""
        self.pool.free(list(reversed(request.block_ids)))
        request.block_ids = self.pool.allocate(self.blocks_needed(num_entries))
        request.num_dropped_tokens = request.num_computed_tokens - num_entries
        self._hashes.pop(request.request_id, None)
        return request.block_ids

    def free(self, request: Request) -> None:
        if self.pending_copies:  # a copy-on-write into a block given back now has no reader
            own = set(request.block_ids)
            self.pending_copies = [(src, dst) for src, dst in self.pending_copies if dst not in own]
        self.pool.free(list(reversed(request.block_ids)))
        request.block_ids = []
        self._hashes.pop(request.request_id, None)

    def pin(self, request: Request) -> list[int]:
        """Hold a reference to the request's blocks indexed in the prefix cache, so they stay
        cached after it is freed (until `unpin`); returns the blocks held."""
        blocks = request.block_ids[:len(self._hashes.get(request.request_id, ()))]
        self.pool.share(blocks)
        return list(blocks)

    def unpin(self, blocks: list[int]) -> None:
        self.pool.free(list(reversed(blocks)))

    def fork(self, parent: Request, child: Request) -> None:
        """Let `child` share every block of `parent` (n > 1 sequences from one prompt)."""
        self.pool.share(parent.block_ids)
        child.block_ids = list(parent.block_ids)
        child.num_computed_tokens = parent.num_computed_tokens
        child.num_dropped_tokens = parent.num_dropped_tokens
        self._hashes[child.request_id] = list(self._hashes.get(parent.request_id, []))
