"""PagedKVCache: every layer's KV blocks, stored the way its codec says, addressed by slot.

A slot is `block * block_size + offset`. Which blocks a sequence owns is the block manager's
business; this class only stores and fetches, through the codec. Each layer holds a dict of
tensors (codes, scales, ...) that all lead with the block dimension, so copying or moving a
block is the same loop whatever the codec.
"""

from __future__ import annotations

import torch

from ember.kv.codecs import KVCodec


class PagedKVCache:
    def __init__(self, codec: KVCodec, num_layers: int, num_blocks: int):
        self.codec = codec
        self.layers: list[dict[str, torch.Tensor]] = [codec.allocate(num_blocks) for _ in range(num_layers)]
        self.num_blocks, self.block_size = num_blocks, codec.block_size
        self.num_kv_heads, self.head_dim = codec.num_kv_heads, codec.head_dim

    @classmethod
    def create(cls, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
               dtype: torch.dtype = torch.float32, kv_cache_dtype: str = "auto") -> "PagedKVCache":
        """A cache for a model of this shape and dtype, with the codec named `kv_cache_dtype`."""
        from ember.kv.codecs import get_kv_codec
        return cls(get_kv_codec(kv_cache_dtype, block_size, num_kv_heads, head_dim, dtype), num_layers, num_blocks)

    @property
    def k(self) -> list[torch.Tensor]:
        """Every layer's K tensor (floats for the plain codecs, codes for the quantized ones)."""
        return [t["k"] for t in self.layers]

    @property
    def v(self) -> list[torch.Tensor]:
        return [t["v"] for t in self.layers]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.codec.write(self.layers[layer], slots, k, v)

    def read_blocks(self, layer: int, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of `blocks` [...] as [..., block_size, Hkv, D] in the model's dtype."""
        return self.codec.read(self.layers[layer], blocks)

    def gather(self, layer: int, block_table: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `length` entries of one sequence as contiguous [length, Hkv, D] tensors."""
        n = -(-length // self.block_size)
        k, v = self.read_blocks(layer, block_table[:n])
        shape = (-1, self.num_kv_heads, self.head_dim)
        return k.reshape(shape)[:length], v.reshape(shape)[:length]

    def views(self, layer: int, block_table: torch.Tensor, first: int, ctx: int):
        """What the queries at entries first..ctx-1 of one sequence attend to (KVCodec.views)."""
        return self.codec.views(self.layers[layer], block_table, first, ctx)

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy whole blocks (copy-on-write after a fork) in every layer, every tensor."""
        if not pairs:
            return
        src = torch.tensor([a for a, _ in pairs], dtype=torch.long)
        dst = torch.tensor([b for _, b in pairs], dtype=torch.long)
        for tensors in self.layers:
            for t in tensors.values():
                t[dst] = t[src]
