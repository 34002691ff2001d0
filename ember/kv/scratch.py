"""ScratchSlots: which block holds which slot of a codec's scratch pools.

Some codecs keep per-block data that only an *open* block needs: one whose last entry is not
written yet (KIVI's full-precision keys, its residual). Such data lives in slots rather than
in every block (`KVCodec.scratch_specs`); `slot_of[block]` (int32) is what the codec's
`write`/`read` and the C kernels index with:
  s >= 0    slot s of the layer's open pool (`<name>` tensors, one pool per layer);
  s <= -2   slot -2 - s of the pass pool (`<name>_pass`, ONE pool shared by all layers);
  -1        none.

Lifetime (PagedKVCache drives it; nothing here knows any codec):
- A block's slot is taken by the first write into it (`open`, before the pass writes: the fused
  C step included). A block that pass both opens and fills (a prefill chunk covering it whole)
  needs its scratch only while each layer writes and attends, one layer after another: it
  takes a pass slot, shared by the layers. Any other block takes an open-pool slot.
- A slot stays through the rest of the pass that fills its block (that pass's prefill queries
  before the block's last entry still read it); `settle`, at the end of the pass, gives back
  the slots of the blocks it filled, pass slots included.
- The block pool's `on_release` gives back the slot of a block it frees or reuses (a finished,
  aborted or preempted request's partial last block); copy-on-write and swap copy a block's
  open slot to one of its copy's own (between passes: no pass slot is held then).

So the open pool holds about one slot per running sequence (its partial last block), and the
pass pool one per block a step fills whole. Exhaustion never fails a step: a pool grows
(doubling) and counts it in `num_grows`; `version` changes so holders of raw pointers (the
fused C step) rebuild them.
"""

from __future__ import annotations

import torch


class ScratchSlots:
    def __init__(self, num_blocks: int, num_slots: int, block_size: int, identity: bool = False,
                 num_pass: int = 0):
        """identity: one open slot per block, slot b for block b, never given back (a cache used
        without a block pool: tests, evaluation). num_pass: slots of the pass pool."""
        self.block_size, self.identity = block_size, identity
        self.num_slots, self.num_pass = num_slots, 0 if identity else num_pass
        self.slot_of = (torch.arange(num_blocks, dtype=torch.int32) if identity
                        else torch.full((num_blocks,), -1, dtype=torch.int32))
        self._free = [] if identity else list(range(num_slots - 1, -1, -1))  # pop() takes the lowest
        self._free_pass = list(range(self.num_pass - 1, -1, -1))
        self._filled: set[int] = set()  # blocks whose last entry this pass wrote
        self.num_grows = 0
        self.version = 0
        self._last = None  # the slots last opened (a copy): every layer of a pass opens the same ones

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_slots - len(self._free)

    @property
    def num_pass_used(self) -> int:
        return self.num_pass - len(self._free_pass)

    def open(self, slots: torch.Tensor) -> bool:
        """Make sure every block `slots` (cache slots, block * block_size + offset) touches holds
        a slot; True when a pool grew (the caller reallocates its tensors: PagedKVCache.open)."""
        if self.identity or slots.numel() == 0:
            return False
        last = self._last  # every layer of a pass opens the same slots: done once, until a release
        if last is not None and last.shape == slots.shape and torch.equal(last, slots):
            return False
        self._last = slots.clone()  # (a copy: the caller may refill its tensor in place)
        bs = self.block_size
        blocks = torch.unique(slots // bs)
        missing = blocks[self.slot_of[blocks] == -1].tolist()
        filled = set((slots[slots % bs == bs - 1] // bs).tolist())
        self._filled |= filled
        version = self.version
        for block in missing:
            if block in filled:  # opened and filled by this pass: a pass slot
                if not self._free_pass:
                    self._grow_pass()
                self.slot_of[block] = -2 - self._free_pass.pop()
            else:
                self.slot_of[block] = self._take_open()
        return self.version != version

    def _take_open(self) -> int:
        if not self._free:
            old = self.num_slots
            self.num_slots = max(1, 2 * old)
            self._free.extend(range(self.num_slots - 1, old - 1, -1))
            self.num_grows += 1
            self.version += 1
        return self._free.pop()

    def _grow_pass(self) -> None:
        old = self.num_pass
        self.num_pass = max(1, 2 * old)
        self._free_pass.extend(range(self.num_pass - 1, old - 1, -1))
        self.num_grows += 1
        self.version += 1

    def take(self, block: int) -> int:
        """The block's open-pool slot, taking one if it has none (copy-on-write, swap)."""
        slot = int(self.slot_of[block])
        if slot < -1:
            raise RuntimeError(f"block {block} holds a pass slot: it can't be copied during a pass")
        if slot < 0:
            slot = self._take_open()
            self.slot_of[block] = slot
        return slot

    def release(self, blocks) -> None:
        """Give back the slots of `blocks` (those that hold one)."""
        if self.identity:
            return
        self._last = None
        for block in blocks:
            slot = int(self.slot_of[block])
            self._filled.discard(block)
            if slot >= 0:
                self._free.append(slot)
            elif slot <= -2:
                self._free_pass.append(-2 - slot)
            self.slot_of[block] = -1

    def settle(self) -> None:
        """A pass ended: blocks it filled need their slots no more."""
        filled, self._filled = self._filled, set()
        self.release(filled)

    def held(self) -> dict[int, int]:
        """block -> slot (as `slot_of` says it), for every block holding one (tests, leak checks)."""
        blocks = (self.slot_of != -1).nonzero().flatten().tolist()
        return {b: int(self.slot_of[b]) for b in blocks}
