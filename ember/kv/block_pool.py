"""BlockPool: fixed-size KV blocks, their reference counts, and the prefix-cache index.

A block with reference count zero is either plain free or, when it holds a full block of
cached tokens, evictable: it stays findable by its hash until the pool needs the space, and
then the least recently freed one is reused first (LRU).
"""

from __future__ import annotations

from collections import OrderedDict, deque


class NoFreeBlocks(RuntimeError):
    pass


class BlockPool:
    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks  # to verify hash hits
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # refcount 0, still cached; oldest first
        self._cached: dict[int, int] = {}  # block hash -> block id
        self.num_evictions = 0
        # Called with blocks whose contents die: freed uncached, or taken again (an evicted
        # cached block included); the KV cache gives back what it kept for them (kv/scratch.py).
        self.on_release = None

    # --- counts -----------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now (free, or cached but unused)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    # --- allocation ---------------------------------------------------------------------------
    def allocate(self, n: int) -> list[int]:
        if n > self.num_free_blocks:
            raise NoFreeBlocks(f"asked for {n} KV blocks, {self.num_free_blocks} free")
        blocks = []
        for _ in range(n):
            if self._free:
                block = self._free.popleft()
            else:
                block, _ = self._evictable.popitem(last=False)
                self._uncache(block)
                self.num_evictions += 1
            self.ref_counts[block] = 1
            blocks.append(block)
        if self.on_release is not None:
            self.on_release(blocks)
        return blocks

    def share(self, blocks: list[int]) -> None:
        """Take one more reference on blocks (a cache hit, or a forked sequence)."""
        for block in blocks:
            if self.ref_counts[block] == 0:
                self._evictable.pop(block, None)
            self.ref_counts[block] += 1

    def free(self, blocks: list[int]) -> None:
        """Drop one reference on each block; callers pass tail blocks first so they are evicted first."""
        for block in blocks:
            count = self.ref_counts[block]
            if count <= 0:
                raise RuntimeError(f"block {block} freed more often than allocated")
            self.ref_counts[block] = count - 1
            if count == 1:
                if self.block_hash[block] is not None:
                    self._evictable[block] = None
                else:
                    self._free.append(block)
                    if self.on_release is not None:
                        self.on_release([block])

    # --- prefix cache index -------------------------------------------------------------------
    def lookup(self, block_hash: int, tokens: tuple[int, ...]) -> int | None:
        """The cached block for this hash, if its tokens really are these (a hash is not proof)."""
        block = self._cached.get(block_hash)
        if block is None or self.block_tokens[block] != tokens:
            return None
        return block

    def lookup_key(self, block_hash: int) -> int | None:
        """The cached block registered under this hash, unverified (for counting what is held)."""
        return self._cached.get(block_hash)

    def cache(self, block: int, block_hash: int, tokens: tuple[int, ...]) -> None:
        """Register a full block under its hash (first writer wins: a duplicate stays uncached)."""
        if self.block_hash[block] is not None or block_hash in self._cached:
            return
        self.block_hash[block] = block_hash
        self.block_tokens[block] = tokens
        self._cached[block_hash] = block

    def _uncache(self, block: int) -> None:
        h = self.block_hash[block]
        if h is not None:
            self._cached.pop(h, None)
            self.block_hash[block] = None
            self.block_tokens[block] = None

    def reset_cache(self) -> None:
        """Forget every cached block that no request holds."""
        while self._evictable:
            block, _ = self._evictable.popitem(last=False)
            self._uncache(block)
            self._free.append(block)
            if self.on_release is not None:
                self.on_release([block])

    def check_consistency(self) -> None:
        """Invariants tests rely on: every block is in exactly one place."""
        free, evictable = set(self._free), set(self._evictable)
        assert not free & evictable
        for b in range(self.num_blocks):
            if self.ref_counts[b] < 0:
                raise AssertionError(f"block {b} has negative refcount")
            in_free = b in free or b in evictable
            if (self.ref_counts[b] == 0) != in_free:
                raise AssertionError(f"block {b}: refcount {self.ref_counts[b]} but free={in_free}")
