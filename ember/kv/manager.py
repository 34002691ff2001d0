"""KVCacheManager: which blocks each request holds, prefix-cache hits, and freeing.

The scheduler asks it for room; it never decides who runs. Prefix caching uses chained
block hashes: a full block's hash covers its own tokens and its parent's hash, so equal
hashes mean equal prefixes; every hit is also verified against the stored tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.kv.block_pool import BlockPool
from ember.kv.chunks import BlendPlan, ChunkCache, ChunkUse, chunk_key
from ember.request import Request


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of which found in the cache
    requests: int = 0
    requests_hit: int = 0


def chain_hash(parent: int | None, tokens: tuple[int, ...], blended: bool = False) -> int:
    """`blended`: the block may hold blended (approximate) KV, so only a prompt with the same
    chunk marks finds it, never one that expects exact entries."""
    return hash((parent, tokens, "blended")) if blended else hash((parent, tokens))


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 enable_chunk_cache: bool = True):
        self.pool = BlockPool(num_blocks)
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.enable_chunk_cache = enable_chunk_cache
        self.chunks = ChunkCache(self.pool, block_size)
        self.stats = PrefixCacheStats()
        self._hashes: dict[str, list[int]] = {}  # request id -> hashes of its cached full blocks
        self.pending_copies: list[tuple[int, int]] = []  # (source, destination) blocks to copy

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # --- prefix cache -------------------------------------------------------------------------
    def _blended_from(self, request: Request) -> int | None:
        """The first entry whose KV may be blended: blocks reaching it are keyed apart."""
        if not (self.enable_chunk_cache and request.chunk_spans):
            return None
        return request.chunk_spans[0][0]

    def _block_hash(self, request: Request, index: int, parent: int | None, chunk: tuple[int, ...]) -> int:
        blended = self._blended_from(request)
        return chain_hash(parent, chunk, blended is not None and (index + 1) * self.block_size > blended)

    def _cached_prefix(self, request: Request) -> list[int]:
        """Cached blocks that hold a prefix of the request's tokens; reads the index only.

        The last token is never taken from the cache: its logits must be computed.
        """
        tokens = request.all_token_ids
        limit = (len(tokens) - 1) // self.block_size
        blocks, parent = [], None
        for i in range(limit):
            chunk = tuple(tokens[i * self.block_size:(i + 1) * self.block_size])
            h = self._block_hash(request, i, parent, chunk)
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
            parent = self._block_hash(request, i, parent, chunk)
            hashes.append(parent)
            self.pool.cache(request.block_ids[i], parent, chunk)

    # --- chunk cache: reuse beyond prefixes (kv/chunks.py) -------------------------------------
    def plan_blend(self, request: Request, start: int) -> BlendPlan | None:
        """What blending would reuse for a request whose first `start` entries are cached: the
        marked chunks that begin at or after `start`, up to the end of the last one, and never
        the prompt's last token (the usual path computes its logits). None: nothing to blend."""
        if not (self.enable_chunk_cache and request.chunk_spans) or request.params.prompt_logprobs is not None:
            return None
        last = request.num_prompt_tokens - 1
        spans = [(s, min(e, last)) for s, e in request.chunk_spans if s >= start and min(e, last) > s]
        if not spans:
            return None
        return BlendPlan(start, spans[-1][1], [ChunkUse(s, e, [], True, tokens=tuple(request.prompt_token_ids[s:e]))
                                               for s, e in spans])

    def take_blend(self, request: Request, plan: BlendPlan, reserve: int = 0) -> bool:
        """Hold the plan's cached chunks and allocate blocks for the missing ones (leaving
        `reserve` blocks free); False, with nothing held, when they don't fit."""
        first: dict[int, ChunkUse] = {}  # a chunk twice in one prompt is held (and filled) once
        repeats: list[tuple[ChunkUse, ChunkUse]] = []
        for use in plan.chunks:
            use.key = chunk_key(use.tokens)
            if use.key in first:
                repeats.append((use, first[use.key]))
                continue
            first[use.key] = use
            found = self.chunks.lookup(use.tokens)
            if found is not None:
                use.blocks, use.fill = found, False
        held = [u.blocks for u in first.values() if not u.fill]
        for blocks in held:
            self.pool.share(blocks)
        missing = [u for u in first.values() if u.fill]
        need = sum(self.blocks_needed(len(u.tokens)) for u in missing)
        if need + reserve > self.pool.num_free_blocks:
            for blocks in reversed(held):
                self.pool.free(list(reversed(blocks)))
            return False
        for use in missing:
            use.blocks = self.pool.allocate(self.blocks_needed(len(use.tokens)))
        for use, source in repeats:  # the same list: released once (release_blend)
            use.blocks, use.fill = source.blocks, False
        request.blend = plan
        stats = self.chunks.stats
        stats.lookups += len(plan.chunks)
        stats.hits += len(plan.chunks) - len(missing)
        stats.tokens_reused += sum(len(u.tokens) for u in plan.chunks if not u.fill)
        return True

    def release_blend(self, request: Request, computed: bool) -> None:
        """Drop the request's hold on its plan's chunk blocks; `computed`: the step ran, so
        the chunks it filled are indexed for later prompts (else they go back unindexed)."""
        plan, request.blend = request.blend, None
        if plan is None:
            return
        if computed:
            for use in plan.chunks:
                if use.fill:
                    self.chunks.register(use.tokens, use.blocks)
            self.chunks.stats.blends += 1
            self.chunks.stats.tokens_recomputed += plan.recomputed
        seen = set()
        for use in reversed(plan.chunks):
            if id(use.blocks) not in seen:
                seen.add(id(use.blocks))
                self.pool.free(list(reversed(use.blocks)))

    def reserve_chunks(self, chunks: list[tuple[int, ...]]) -> tuple[list[ChunkUse], int]:
        """Blocks for precomputing chunks ahead of queries: a ChunkUse to fill for each one not
        cached yet, and the count already cached. Raises ValueError when they don't fit."""
        uses, cached, seen = [], 0, set()
        for tokens in chunks:
            if self.chunks.lookup(tokens) is not None or chunk_key(tokens) in seen:
                cached += 1
                continue
            seen.add(chunk_key(tokens))
            uses.append(ChunkUse(0, len(tokens), [], True, chunk_key(tokens), tokens))
        need = sum(self.blocks_needed(len(u.tokens)) for u in uses)
        if need > self.pool.num_free_blocks:
            raise ValueError(f"the chunks need {need} KV blocks, {self.pool.num_free_blocks} are free")
        for use in uses:
            use.blocks = self.pool.allocate(self.blocks_needed(len(use.tokens)))
        return uses, cached

    def store_chunks(self, uses: list[ChunkUse], computed: bool) -> None:
        """Index precomputed chunks (when `computed`) and let go of them: they stay cached
        until the pool needs the space."""
        for use in uses:
            if computed:
                self.chunks.register(use.tokens, use.blocks)
                self.chunks.stats.warmed += 1
            self.pool.free(list(reversed(use.blocks)))

    # --- allocation ---------------------------------------------------------------------------
    def can_allocate(self, request: Request, num_new_tokens: int, reserve: int = 0) -> bool:
        need = self.blocks_needed(request.num_cached_tokens + num_new_tokens) - len(request.block_ids)
        return need <= self.pool.num_free_blocks - reserve

    def allocate_slots(self, request: Request, num_new_tokens: int, reserve: int = 0) -> bool:
        """Make room for `num_new_tokens` more tokens of K/V; False (and nothing taken) if there is none.

        Writing into a partly filled block that another sequence shares (after a fork) first
        copies it (copy-on-write); the copy is queued in `pending_copies` for the runner.
        """
        cached = request.num_cached_tokens  # blocks and slots count cache entries, not positions
        need = self.blocks_needed(cached + num_new_tokens) - len(request.block_ids)
        last_shared = (cached % self.block_size != 0 and num_new_tokens > 0
                       and self.pool.ref_counts[request.block_ids[cached // self.block_size]] > 1)
        total = max(need, 0) + last_shared
        if total + reserve > self.pool.num_free_blocks:
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
        self.release_blend(request, computed=False)
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
