"""PagedKVCache: the preallocated K and V memory of every layer, addressed by slot.

Layout per layer: [num_blocks, block_size, num_kv_heads, head_dim]. A slot is
`block * block_size + offset`. Which blocks a sequence owns is the block manager's business;
this class only stores and fetches.
"""

from __future__ import annotations

import torch


class PagedKVCache:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32):
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        # Zeros, not empty: batched attention reads padding slots under a mask, and 0 x NaN
        # from uninitialised memory would still poison the probability-value product.
        self.k = [torch.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.num_blocks, self.block_size = num_blocks, block_size
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        flat = (-1, self.num_kv_heads, self.head_dim)
        self.k[layer].view(flat).index_copy_(0, slots, k.to(self.k[layer].dtype))
        self.v[layer].view(flat).index_copy_(0, slots, v.to(self.v[layer].dtype))

    def gather(self, layer: int, block_table: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `length` tokens of one sequence as contiguous [length, Hkv, D] tensors."""
        n = -(-length // self.block_size)
        blocks = block_table[:n]
        shape = (-1, self.num_kv_heads, self.head_dim)
        return (self.k[layer][blocks].reshape(shape)[:length], self.v[layer][blocks].reshape(shape)[:length])

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy whole blocks (copy-on-write after a fork) in every layer."""
        if not pairs:
            return
        src = torch.tensor([a for a, _ in pairs], dtype=torch.long)
        dst = torch.tensor([b for _, b in pairs], dtype=torch.long)
        for layer in range(len(self.k)):
            self.k[layer][dst] = self.k[layer][src]
            self.v[layer][dst] = self.v[layer][src]
