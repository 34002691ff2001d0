"""PagedKVCache: every layer's KV blocks, stored the way its codec says, addressed by slot.

A slot is `block * block_size + offset`. Which blocks a sequence owns is the block manager's
business; this class only stores and fetches, through the codec. Each layer holds a dict of
tensors (codes, scales, ...) that all lead with the block dimension, so copying or moving a
block is the same loop whatever the codec; a codec's scratch data (`KVCodec.scratch_specs`,
what only open blocks need) lives in pools of slots instead, handed out per block by
kv/scratch.py: a block's slot is taken by its first write (`open`), given back after the pass
that fills it (`settle`) or when the block pool frees it (`release`), and moves with it
(`copy_blocks`, `transfer`). Each layer has its own open pool (`<name>` tensors); the pass pool
(`<name>_pass`, blocks a pass opens and fills) is one tensor shared by every layer's dict, since
a layer's scratch data of such a block is read only by that layer's attention, right after its
write, before the next layer writes.
"""

from __future__ import annotations

import numpy as np
import torch

from ember.kv.codecs import KVCodec
from ember.kv.scratch import ScratchSlots


class PagedKVCache:
    def __init__(self, codec: KVCodec, num_layers: int, num_blocks: int, num_scratch: int | None = None,
                 num_pass: int = 1):
        """num_scratch: slots of the codec's open scratch pool, num_pass: of its pass pool (both
        grown if ever short); num_scratch None: one open slot per block, fixed, and no pass pool
        (a cache driven without a block pool: tests, evaluation)."""
        self.codec = codec
        self.num_blocks, self.block_size = num_blocks, codec.block_size
        self.num_kv_heads, self.head_dim = codec.num_kv_heads, codec.head_dim
        self.block_names = tuple(codec.tensor_specs())
        self.scratch_names = tuple(codec.scratch_specs())
        identity = num_scratch is None
        self.scratch = ScratchSlots(num_blocks, num_blocks if identity else max(1, num_scratch), self.block_size,
                                    identity, max(1, num_pass)) if self.scratch_names else None
        n = None if identity else self.scratch.num_slots if self.scratch else 0
        self.layers: list[dict[str, torch.Tensor]] = [codec.allocate(num_blocks, n) for _ in range(num_layers)]
        if self.scratch is not None:
            shared = {name + "_pass": torch.zeros((self.scratch.num_pass, *shape), dtype=dtype)
                      for name, (shape, dtype) in codec.scratch_specs().items()}
            for tensors in self.layers:  # one slot map and pass pool for every layer
                tensors["scratch_slot"] = self.scratch.slot_of
                tensors |= shared

    @classmethod
    def create(cls, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
               dtype: torch.dtype = torch.float32, kv_cache_dtype: str = "auto",
               num_scratch: int | None = None) -> "PagedKVCache":
        """A cache for a model of this shape and dtype, with the codec named `kv_cache_dtype`."""
        from ember.kv.codecs import get_kv_codec
        return cls(get_kv_codec(kv_cache_dtype, block_size, num_kv_heads, head_dim, dtype), num_layers, num_blocks,
                   num_scratch)

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

    # --- scratch slots ----------------------------------------------------------------------------
    @property
    def scratch_version(self) -> int:
        """Changes when the scratch tensors are reallocated (pointers into them go stale)."""
        return self.scratch.version if self.scratch else 0

    def scratch_bytes(self) -> int:
        """What the scratch pools take now, all layers (the pass pool once)."""
        if self.scratch is None or self.scratch.identity:
            return 0
        return (self.num_layers * self.scratch.num_slots + self.scratch.num_pass) * self.codec.bytes_per_scratch_slot()

    def open(self, slots: torch.Tensor) -> None:
        """Before a pass writes `slots` (every layer; the fused C step too): every block they
        touch holds a scratch slot. Idempotent."""
        if self.scratch is None:
            return
        if self.scratch.open(slots):
            self._fit()

    def _fit(self) -> None:
        """Reallocate the scratch tensors if a slot pool grew (contents kept)."""
        def grow(t, n):
            if t.shape[0] >= n:
                return t
            grown = torch.zeros((n, *t.shape[1:]), dtype=t.dtype)
            grown[:t.shape[0]] = t
            return grown

        for name in self.scratch_names:
            shared = grow(self.layers[0][name + "_pass"], self.scratch.num_pass)
            for tensors in self.layers:
                tensors[name] = grow(tensors[name], self.scratch.num_slots)
                tensors[name + "_pass"] = shared

    def settle(self) -> None:
        """A pass ended: the blocks it filled give their scratch slots back."""
        if self.scratch is not None:
            self.scratch.settle()

    def release(self, blocks) -> None:
        """The block pool freed (or is reusing) these blocks: their scratch slots go back."""
        if self.scratch is not None:
            self.scratch.release(blocks)

    # --- data -----------------------------------------------------------------------------------
    def bind_model(self, model) -> None:
        """Give the codec what it takes from the loaded model, layer by layer (KVCodec.bind_layer)."""
        for index, tensors in enumerate(self.layers):
            self.codec.bind_layer(tensors, model, index)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              positions: torch.Tensor | None = None) -> None:
        """Rows k, v [T, Hkv, D] into `slots`; `positions` [T]: their RoPE positions (only a codec
        that `needs_positions` reads them, and refuses a write without them)."""
        self.open(slots)
        if self.codec.needs_positions:
            if positions is None:
                raise ValueError(f"the {self.codec.name!r} KV cache stores rows through their RoPE positions; "
                                 "this write does not give them (a press compacting entries can't use it)")
            self.codec.write(self.layers[layer], slots, k, v, positions=positions)
        else:
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
        """Copy whole blocks (copy-on-write after a fork) in every layer, every tensor; a
        block's scratch data goes to a slot of its own copy."""
        if pairs:
            self.transfer(self, [a for a, _ in pairs], [b for _, b in pairs])

    def transfer(self, dst: "PagedKVCache", src_blocks: list[int], dst_blocks: list[int],
                 blocks: bool = True, scratch: bool = True) -> None:
        """dst's blocks `dst_blocks` become copies of this cache's `src_blocks` (same codec and
        layers; dst may be this cache, or a host pool for swap), scratch data included: a
        destination whose source holds no scratch slot gives its own back. `blocks` / `scratch`
        False leaves that part out (a swap-in off the engine thread moves the blocks' bytes there
        and does the slot bookkeeping, which the step also does, on the engine thread)."""
        if not src_blocks:
            return
        pairs = []
        if scratch and self.scratch is not None:
            have = [(int(self.scratch.slot_of[a]), b) for a, b in zip(src_blocks, dst_blocks)]
            if any(s <= -2 for s, _ in have):
                raise RuntimeError("a block holding a pass slot can't be copied (only between passes)")
            dst.release([b for s, b in have if s < 0] if not dst.scratch.identity else [])
            for s, b in have:
                if s >= 0:
                    pairs.append((s, dst.scratch.take(b)))
            dst._fit()
        for a, b in zip(self.layers, dst.layers):
            if blocks:
                copy_rows({name: a[name] for name in self.block_names}, src_blocks, b, dst_blocks)
            if pairs:
                copy_rows({name: a[name] for name in self.scratch_names}, [s for s, _ in pairs], b,
                          [d for _, d in pairs])


def runs(src: list[int], dst: list[int]) -> list[tuple[int, int, int]]:
    """(src start, dst start, length) stretches where both lists count up by one."""
    out: list[tuple[int, int, int]] = []
    for s, d in zip(src, dst):
        if out and s == out[-1][0] + out[-1][2] and d == out[-1][1] + out[-1][2]:
            a, b, n = out[-1]
            out[-1] = (a, b, n + 1)
        else:
            out.append((s, d, 1))
    return out


def copy_rows(src: dict[str, torch.Tensor], rows: list[int], dst: dict[str, torch.Tensor], to: list[int]) -> None:
    """dst[name][to] = src[name][rows] for every tensor of `src`, one slice per run of rows.

    The bytes move through numpy: a plain memcpy on the calling thread, with the GIL released.
    torch's indexed or large-slice copies hand the work to the intra-op thread pool, which, beside
    a busy engine (or on a swap-in thread beside the step's own forward), spins against it:
    40-100x slower on a loaded 2-core machine (benchmarks/README.md, FastSwitch)."""
    stretches = runs(rows, to)
    for name, t in src.items():
        s_bytes, d_bytes = t.view(torch.uint8).numpy(), dst[name].view(torch.uint8).numpy()
        for s, d, n in stretches:
            np.copyto(d_bytes[d:d + n], s_bytes[s:s + n])
