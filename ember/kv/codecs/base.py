"""The KVCodec seam: how one layer's paged blocks store K and V.

A codec owns its tensors (a dict per layer, each leading with the block dimension: codes,
scales, ...), how new K/V rows are written into slots, and how blocks are read back for
attention as dense K/V in the model's dtype. Everything that moves blocks (copy-on-write,
swap, preemption) loops over the dict, so a new codec needs no change there. `native_kind`
names the layout in csrc/attention_paged.h that the fused C step reads; None means the
fused step refuses the codec (and says so).
"""

from __future__ import annotations

import math

import torch

from ember.registry import Registry


class KVCodec:
    name = ""
    native_kind: str | None = None  # a kind of csrc/attention_paged.h (ember_kv_kind_names)

    def __init__(self, block_size: int, num_kv_heads: int, head_dim: int, model_dtype: torch.dtype):
        self.block_size, self.num_kv_heads, self.head_dim = block_size, num_kv_heads, head_dim
        self.model_dtype = model_dtype

    # --- layout ---------------------------------------------------------------------------------
    def tensor_specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """name -> (shape of one block's part, dtype); the block dimension is prepended."""
        raise NotImplementedError

    def bytes_per_block(self) -> int:
        """Bytes one block of one layer takes (K and V, with their scales)."""
        return sum(math.prod(shape) * torch.empty((), dtype=dtype).element_size()
                   for shape, dtype in self.tensor_specs().values())

    def allocate(self, num_blocks: int) -> dict[str, torch.Tensor]:
        # Zeros, not empty: batched attention reads padding slots under a mask, and 0 x NaN
        # from uninitialised memory would still poison the probability-value product.
        return {name: torch.zeros((num_blocks, *shape), dtype=dtype)
                for name, (shape, dtype) in self.tensor_specs().items()}

    # --- data -----------------------------------------------------------------------------------
    def write(self, tensors: dict[str, torch.Tensor], slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store rows k, v [T, Hkv, D] at `slots` (block * block_size + offset). A write that
        reaches a block's offset 0 starts that block afresh (its old contents are stale)."""
        raise NotImplementedError

    def read(self, tensors: dict[str, torch.Tensor], blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of `blocks` (int64, any shape [...]) as [..., block_size, Hkv, D] in the model dtype."""
        raise NotImplementedError

    def views(self, tensors: dict[str, torch.Tensor], table: torch.Tensor, first: int, ctx: int
              ) -> list[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """What the queries at entries first..ctx-1 of one sequence (block table `table`, its
        first ctx entries written) attend to: (q_first, q_end, keys, values) pieces covering
        first..ctx-1, where queries q_first..q_end-1 see entries 0..q_end-1 (causal within
        them). One piece, the blocks as stored, unless a codec's entries read differently
        depending on which query looks (KIVI: a block's exact keys until its last entry)."""
        n = -(-ctx // self.block_size)
        k, v = self.read(tensors, table[:n])
        shape = (-1, self.num_kv_heads, self.head_dim)
        return [(first, ctx, k.reshape(shape)[:ctx], v.reshape(shape)[:ctx])]


KV_CODECS: Registry[KVCodec] = Registry("KV cache dtype")
