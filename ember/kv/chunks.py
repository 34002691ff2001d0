"""Chunk cache: KV of marked text chunks (documents), found by content wherever they stand.

The prefix cache only matches a prompt's beginning. A chunk's KV is computed once on its own,
at positions 0..L-1, into pool blocks registered under keys made from its token ids; a later
prompt that holds the same chunk at any position reuses those entries with the keys rotated
to where the chunk now stands (CacheBlend). The blocks live in the same BlockPool as the
prefix cache: a request holds a reference while it reads them, and at reference count zero
they stay findable until the pool needs the space (least recently used first).

A `BlendPlan` is what the scheduler hands the model runner for one request: the range of its
prompt to blend, and for each chunk in it the blocks that hold (or will hold, once filled
this step) the chunk's own KV.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ember.kv.block_pool import BlockPool


@dataclass
class ChunkUse:
    start: int  # the chunk's first token in the request's prompt
    end: int
    blocks: list[int]  # the chunk's own KV (positions 0..end-start-1), one reference held
    fill: bool  # True: missing from the cache; the runner computes it into `blocks` first
    key: int = 0  # the content hash it is registered under once filled
    tokens: tuple[int, ...] = ()


@dataclass
class BlendPlan:
    start: int  # first prompt entry the blend computes (what the prefix cache held comes before)
    end: int  # one past the last: the rest of the prompt is prefilled as usual
    chunks: list[ChunkUse] = field(default_factory=list)
    recomputed: int = 0  # chunk entries the blend computed again (the runner sets it)

    @property
    def num_fill_blocks(self) -> int:
        return sum(len(c.blocks) for c in self.chunks if c.fill)


@dataclass
class ChunkStats:
    lookups: int = 0  # chunks looked up at admission
    hits: int = 0  # of which found cached
    tokens_reused: int = 0  # chunk tokens whose KV came from the cache
    tokens_recomputed: int = 0  # chunk tokens the blend computed again (selected by deviation)
    blends: int = 0  # requests blended
    warmed: int = 0  # chunks computed ahead of queries (precompute)


def chunk_key(tokens: tuple[int, ...]) -> int:
    return hash(("chunk", tokens))


def _block_key(key: int, index: int) -> int:
    return hash((key, index))


class ChunkCache:
    """Content-addressed chunk entries over a BlockPool's cache index."""

    def __init__(self, pool: BlockPool, block_size: int):
        self.pool, self.block_size = pool, block_size
        self.stats = ChunkStats()
        self._lengths: dict[int, int] = {}  # chunk key -> token count, for what `bytes held` counts

    def _pieces(self, tokens: tuple[int, ...]) -> list[tuple[int, ...]]:
        bs = self.block_size
        return [tokens[i:i + bs] for i in range(0, len(tokens), bs)]

    def lookup(self, tokens: tuple[int, ...]) -> list[int] | None:
        """The blocks holding this chunk's KV, if every one of them is still cached."""
        key = chunk_key(tokens)
        if key not in self._lengths:
            return None
        blocks = []
        for i, piece in enumerate(self._pieces(tokens)):
            block = self.pool.lookup(_block_key(key, i), piece)
            if block is None:
                return None
            blocks.append(block)
        return blocks

    def register(self, tokens: tuple[int, ...], blocks: list[int]) -> None:
        """Index freshly filled blocks (a chunk already present keeps its first copy)."""
        key = chunk_key(tokens)
        if self.lookup(tokens) is not None:
            return
        for i, (block, piece) in enumerate(zip(blocks, self._pieces(tokens))):
            self.pool.cache(block, _block_key(key, i), piece)
        self._lengths[key] = len(tokens)

    def cached_blocks(self) -> int:
        """Blocks the pool still holds for some chunk (evicted ones drop out as the pool reuses them)."""
        live = 0
        for key, length in list(self._lengths.items()):
            n = -(-length // self.block_size)
            found = sum(self.pool.lookup_key(_block_key(key, i)) is not None for i in range(n))
            if found == 0:
                self._lengths.pop(key, None)  # wholly evicted: forget it
            live += found
        return live

    @property
    def num_chunks(self) -> int:
        return len(self._lengths)
