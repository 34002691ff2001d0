"""The KVCodec seam: how one layer's paged blocks store K and V.

A codec owns its tensors (a dict per layer, each leading with the block dimension: codes,
scales, ...), how new K/V rows are written into slots, and how blocks are read back for
attention as dense K/V in the model's dtype. Everything that moves blocks (copy-on-write,
swap, preemption) loops over the dict, so a new codec needs no change there. A codec may also
keep per-block data that only an open block (last entry not yet written) needs in a scratch
pool (`scratch_specs`: tensors leading with the pool's slot dimension, indexed through the
dict's `scratch_slot` [num_blocks] int32); kv/scratch.py hands out, gives back, copies and
swaps those slots, so the codec only reads and writes them. `native_kind`
names the layout in csrc/attention_paged.h that the fused C step reads; None means the
fused step refuses the codec (and says so).
"""

from __future__ import annotations

import math

import torch

from ember.kv.memory import lazy_zeros
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

    def scratch_specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """name -> (shape of one scratch slot's part, dtype): data only open blocks need (none
        by default); the slot dimension is prepended."""
        return {}

    @staticmethod
    def _bytes(specs) -> int:
        return sum(math.prod(shape) * torch.empty((), dtype=dtype).element_size() for shape, dtype in specs.values())

    def bytes_per_block(self) -> int:
        """Bytes one block of one layer takes (K and V, with their scales; not the scratch)."""
        return self._bytes(self.tensor_specs())

    def bytes_per_scratch_slot(self) -> int:
        """Bytes one scratch slot of one layer takes (0: the codec keeps none)."""
        return self._bytes(self.scratch_specs())

    def allocate(self, num_blocks: int, num_scratch: int | None = None) -> dict[str, torch.Tensor]:
        """The block tensors, and where the codec has scratch data, `num_scratch` slots of it
        (None: one per block, block b's in slot b) and `scratch_slot` (the slot map: identity
        for None, else all -1; PagedKVCache puts one map shared by every layer in its place)."""
        # Zeros, not empty: batched attention reads padding slots under a mask, and 0 x NaN
        # from uninitialised memory would still poison the probability-value product. Mapped on
        # first write (kv/memory.py): a cache sized for the worst case costs what it holds.
        tensors = {name: lazy_zeros((num_blocks, *shape), dtype)
                   for name, (shape, dtype) in self.tensor_specs().items()}
        scratch = self.scratch_specs()
        if scratch:
            n = num_blocks if num_scratch is None else num_scratch
            tensors |= {name: lazy_zeros((n, *shape), dtype) for name, (shape, dtype) in scratch.items()}
            tensors["scratch_slot"] = (torch.arange(num_blocks, dtype=torch.int32) if num_scratch is None
                                       else torch.full((num_blocks,), -1, dtype=torch.int32))
        return tensors

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
