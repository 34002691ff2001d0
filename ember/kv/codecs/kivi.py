"""`kivi4`, `kivi2`: KIVI (Liu et al. 2024; jy-yuan/KIVI): keys quantized per channel over a
group of tokens, values per token, both asymmetric (a scale and a minimum), 4 or 2 bits.

Choices (the group sizes follow from the paged layout: `--block-size` sets the key group, the
codec's name the value group):
- The key group is one block: a block's keys are quantized together, per KV head and channel,
  when the write that fills its last slot lands. Until then the block's keys are its
  residual, kept in full precision (the model's dtype); a partial block reads back its keys
  exactly. The paper's residual window R becomes "the tokens of the unfilled last block"
  (0..block_size-1 tokens), and G = block_size (16 by default; the paper uses 32). Larger
  blocks cost fewer bytes (4/G a key for fp16 statistics) but a larger residual slot, and
  coarser keys: at 256 tokens kivi4-fp16's 4k passkey retrieval halved (benchmarks/README.md).
- Values are quantized per token as they are written, in groups of 32 channels (the paper's;
  a whole head where head_dim < 32): a value row needs no other row, so no value residual is
  stored. Partial blocks' values are therefore quantized too. (One group per 64-channel head
  instead cost twice the perplexity on this model: +1.44% against +0.69% over fp32 KV on
  1,024 tokens; benchmarks/README.md, "KIVI".) `kivi4-fp16-v64` takes groups of 64 channels
  anyway: with `--block-size 64` its blocks take 3.56x fewer bytes than bf16, at +1.81%
  perplexity (benchmarks/README.md, "KIVI", "Larger key groups").
- scale = (max - min) / (2^bits - 1), code = round((x - min) / scale) (ties to even, clamped to
  [0, 2^bits - 1]), x' = code * scale + min; a constant group has scale 0 and codes 0.
  Scales and minimums are fp32; `kivi4-fp16`/`kivi2-fp16` keep them in fp16, rounded (to
  nearest even) before the codes are computed from them, for 2,160 fewer B/token on the
  default model (benchmarks/README.md, "KIVI", for the perplexity cost).
- Codes are packed little-endian along the channels: channel c of a row sits at bit
  bits * c of the row's bytes (4-bit: low nibble first).
- What a query sees (`views`): the cache as decoding would have left it at the query's own
  entry. A prefill chunk's query before its block's last entry reads that block's exact keys
  even when a later token of the same chunk filled (and quantized) it; so chunked prefill,
  whole-prompt prefill and decoding store and compute the same, whatever the chunk sizes.
  (KIVI itself attends the whole prompt at full precision; here earlier, full blocks of a
  prompt are read quantized during its own prefill, as every Ember codec does.)

The residual lives in a scratch pool, not in the blocks (kv/scratch.py, the KVCodec seam's
`scratch_specs`): only an open block (its last slot not yet written) holds a slot, taken by the
first write into it and given back after the pass that fills it (that pass's prefill queries
still read the exact keys, see `views`), or when the block pool frees or reuses the block (a
finished, aborted or preempted request's partial last block). Copy-on-write gives the copy a
slot of its own; swap moves the slot's rows to a host scratch slot and back; a chunk that the
chunk cache indexes keeps its partial last block's slot while it is indexed (the block is
evictable; its slot comes back when the pool reuses it), so a later prompt reads that chunk's
keys exactly, as before. `scratch_slot` [blocks] int32 maps a block to its slot: s >= 0 in
the layer's own pool `k_res`, s <= -2 in `k_res_pass` (slot -2 - s), a pool shared by all layers
for blocks a pass both opens and fills (a prefill chunk's whole blocks: each layer reads them
only in its own attention, right after its write), -1 none.
Sizing (kv/spec.py): max_num_seqs + 2 slots a layer (a partial block per sequence, and two
prefills that fill one block and open the next in the same step) and ceil(max_num_batched_tokens
/ block_size) + 1 shared pass slots, counted in the cache's bytes (`KVCacheSpec.scratch_bytes`,
taken out of `--kv-cache-memory`; the open pool gets at most a quarter of it, and where that
holds fewer slots, the engine runs fewer sequences at once: `KVCacheSpec.max_num_seqs`). An exhausted pool never fails a step: it grows (doubling;
`ScratchSlots.num_grows`) and the fused C step picks up the new tensors.
Without a pool (a PagedKVCache built without `num_scratch`: tests, evaluation) every block
has a slot, its own.

Per block (Hkv heads, D channels, bs tokens, b bits):
  k, v              uint8 [bs, Hkv, D*b/8]  packed codes (k: valid once the block is full)
  k_scale, k_min    fp32  [Hkv, D]          per channel over the block's tokens (-fp16: fp16)
  v_scale, v_min    fp32  [bs, Hkv, D/Gv]   per token and group of Gv = 32 channels (-fp16: fp16;
                                            -v64: 64)
  k_full            uint8 [1]               1 once the block's last slot was written (k holds codes)
Per scratch slot (k_res: one pool per layer; k_res_pass: one pool for all layers):
  k_res, k_res_pass model dtype [bs, Hkv, D] the keys as written (the residual)
So on the default model (30 layers, 3 KV heads of 64, bs 16) kivi4 takes 10,082 B/token in
blocks (2.29x fewer than bf16's 23,040; kivi4-fp16 7,922, 2.91x; kivi2 7,202, 3.20x; kivi2-fp16
5,042, 4.57x; kivi4-fp16 at bs 256 6,570, 3.51x; kivi4-fp16-v64 at bs 64 6,480, 3.56x), plus
the scratch, which grows with bs: 12,288 B per open slot and layer for an fp32 model (6,144 for
bf16), with the defaults (64 sequences, 512-token budget) 66 open slots a layer and 33 pass
slots, 23.6 MiB (fp32; 11.8 MiB bf16) of a 1 GiB cache.

`quantize`/`dequantize` and `encode_keys`/`encode_values` below are the plain PyTorch
reference; csrc/attention_paged.h's KIVI kinds store bit for bit what `write` stores, and
dequantize in registers inside the paged attention.
"""

from __future__ import annotations

import torch

from ember.kv.codecs.base import KV_CODECS, KVCodec

VALUE_GROUP = 32  # channels per value scale and minimum (KIVI's group size)


# --- reference ----------------------------------------------------------------------------------
def quantize(x: torch.Tensor, dim: int, bits: int, stat_dtype: torch.dtype = torch.float32
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric quantization of fp32 x over `dim`: (codes int64 in [0, 2^bits-1] shaped like x,
    scale, minimum) with `dim` reduced. stat_dtype fp16: scale and minimum rounded to fp16 (to
    nearest even) before the codes are computed from them (returned as fp32, exact in fp16)."""
    qmax = (1 << bits) - 1
    x = x.float()
    mn, mx = x.amin(dim), x.amax(dim)
    scale = (mx - mn) / qmax
    if stat_dtype != torch.float32:
        scale, mn = scale.to(stat_dtype).float(), mn.to(stat_dtype).float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((x - mn.unsqueeze(dim)) / safe.unsqueeze(dim)).clamp_(0, qmax)
    return codes.to(torch.int64), scale, mn


def dequantize(codes: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, dim: int) -> torch.Tensor:
    return codes.float() * scale.unsqueeze(dim) + mn.unsqueeze(dim)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes [..., D] (values < 2^bits) -> uint8 [..., D*bits/8], channel c at bit bits*c."""
    per = 8 // bits
    c = codes.to(torch.int32).reshape(*codes.shape[:-1], -1, per)
    shifts = torch.arange(per, dtype=torch.int32) * bits
    return (c << shifts).sum(-1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 [..., n] -> int32 codes [..., n*8/bits] (pack's inverse)."""
    per, mask = 8 // bits, (1 << bits) - 1
    shifts = torch.arange(per, dtype=torch.int32) * bits
    return ((packed.to(torch.int32)[..., None] >> shifts) & mask).reshape(*packed.shape[:-1], -1)


def encode_keys(k: torch.Tensor, bits: int, stat_dtype: torch.dtype = torch.float32
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blocks of keys [..., bs, Hkv, D] -> (packed codes [..., bs, Hkv, D*bits/8], scale [..., Hkv, D],
    min [Hkv, D]): per channel over the block's tokens."""
    codes, scale, mn = quantize(k, -3, bits, stat_dtype)
    return pack(codes, bits), scale, mn


def value_group(head_dim: int, group: int = VALUE_GROUP) -> int:
    return min(group, head_dim)


def encode_values(v: torch.Tensor, bits: int, stat_dtype: torch.dtype = torch.float32, group: int = VALUE_GROUP
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Value rows [..., D] -> (packed codes [..., D*bits/8], scale [..., D/G], min [..., D/G]):
    per token and group of G = value_group(D, group) channels."""
    d = v.shape[-1]
    codes, scale, mn = quantize(v.reshape(*v.shape[:-1], d // value_group(d, group), -1), -1, bits, stat_dtype)
    return pack(codes.flatten(-2), bits), scale, mn


def decode_keys(packed: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, bits: int) -> torch.Tensor:
    """packed [..., bs, Hkv, D*bits/8], scale/min [..., Hkv, D] -> [..., bs, Hkv, D] fp32."""
    return unpack(packed, bits).float() * scale.float().unsqueeze(-3) + mn.float().unsqueeze(-3)


def decode_values(packed: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, bits: int) -> torch.Tensor:
    """packed [..., D*bits/8], scale/min [..., D/G] -> [..., D] fp32."""
    codes = unpack(packed, bits)
    return dequantize(codes.reshape(*scale.shape, -1), scale.float(), mn.float(), -1).flatten(-2)


# --- codec --------------------------------------------------------------------------------------
class KiviCodec(KVCodec):
    bits: int
    stat_dtype = torch.float32  # of the scales and minimums
    value_group_size = VALUE_GROUP  # channels per value scale and minimum (-v64: 64)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vgroup = value_group(self.head_dim, self.value_group_size)
        if (self.head_dim * self.bits) % 8 or self.head_dim % self.vgroup:
            raise ValueError(f"{self.name}: head_dim {self.head_dim} does not pack into whole bytes and value groups")

    @property
    def native_kind(self) -> str | None:
        # csrc/attention_paged.h: fp32 or bf16 residual, head_dim and the value group multiples of
        # 32, <= 1024 codes a group
        fits = self.model_dtype in (torch.float32, torch.bfloat16) and self.head_dim % 32 == 0 \
            and self.vgroup % 32 == 0 and self.head_dim <= 1024 and self.block_size <= 1024
        return f"kivi{self.bits}" if fits else None  # fp16 statistics: the layout's stats_f16

    @property
    def residual_dtype(self) -> torch.dtype:
        return self.model_dtype

    def tensor_specs(self):
        bs, h, d = self.block_size, self.num_kv_heads, self.head_dim
        codes = (bs, h, d * self.bits // 8)
        return {"k": (codes, torch.uint8), "v": (codes, torch.uint8),
                "k_scale": ((h, d), self.stat_dtype), "k_min": ((h, d), self.stat_dtype),
                "v_scale": ((bs, h, d // self.vgroup), self.stat_dtype), "v_min": ((bs, h, d // self.vgroup), self.stat_dtype),
                "k_full": ((1,), torch.uint8)}

    def scratch_specs(self):
        """The residual: only open blocks read it (a block's keys are quantized by the write
        that fills it, and `views` reads them exact only during that write's pass)."""
        return {"k_res": ((self.block_size, self.num_kv_heads, self.head_dim), self.model_dtype)}

    def _res_write(self, tensors, slots: torch.Tensor, k: torch.Tensor) -> None:
        """Keys k [T, Hkv, D] into the residual of cache slots `slots`: the layer's open pool
        (`k_res`) or the pass pool shared by the layers (`k_res_pass`), as kv/scratch.py says."""
        bs, h, d = self.block_size, self.num_kv_heads, self.head_dim
        s = tensors["scratch_slot"][slots // bs].long()
        if bool((s == -1).any()):
            raise RuntimeError("a KIVI write into a block without a residual slot: open the slots first "
                               "(PagedKVCache.write and the fused step do)")
        k = k.to(self.model_dtype)
        own = s >= 0
        if bool(own.all()):
            tensors["k_res"].view(-1, h, d).index_copy_(0, s * bs + slots % bs, k)
            return
        tensors["k_res"].view(-1, h, d).index_copy_(0, (s * bs + slots % bs)[own], k[own])
        tensors["k_res_pass"].view(-1, h, d).index_copy_(0, ((-2 - s) * bs + slots % bs)[~own], k[~own])

    def _res_blocks(self, tensors, blocks: torch.Tensor) -> torch.Tensor:
        """The residual of `blocks` [...] as [..., bs, Hkv, D] (garbage for blocks without a slot:
        full ones, read quantized)."""
        s = tensors["scratch_slot"][blocks].long()
        res = tensors["k_res"][s.clamp(min=0)]
        passed = s <= -2
        if bool(passed.any()):
            res[passed] = tensors["k_res_pass"][-2 - s[passed]]
        return res

    def write(self, tensors, slots, k, v):
        bs, h, d = self.block_size, self.num_kv_heads, self.head_dim
        codes, scale, mn = encode_values(v, self.bits, self.stat_dtype, self.vgroup)
        scale, mn = scale.to(self.stat_dtype), mn.to(self.stat_dtype)
        tensors["v"].view(-1, h, codes.shape[-1]).index_copy_(0, slots, codes)
        tensors["v_scale"].view(-1, h, d // self.vgroup).index_copy_(0, slots, scale)
        tensors["v_min"].view(-1, h, d // self.vgroup).index_copy_(0, slots, mn)
        self._res_write(tensors, slots, k)
        # A block is quantized by the write that reaches its last slot; any other write into a
        # block leaves it (or makes it again) a residual block.
        blocks = slots // bs
        touched = torch.unique(blocks)
        filled = torch.unique(blocks[slots % bs == bs - 1])
        tensors["k_full"][touched] = 0
        if len(filled):
            kc, ks, km = encode_keys(self._res_blocks(tensors, filled).float(), self.bits, self.stat_dtype)
            ks, km = ks.to(self.stat_dtype), km.to(self.stat_dtype)
            tensors["k"][filled], tensors["k_scale"][filled], tensors["k_min"][filled] = kc, ks, km
            tensors["k_full"][filled] = 1

    def read_fp32(self, tensors, blocks) -> tuple[torch.Tensor, torch.Tensor]:
        """`read` before rounding to the model's dtype (what the C kernel computes with)."""
        full = tensors["k_full"][blocks][..., None, None]  # [..., 1, 1, 1]
        quantized = decode_keys(tensors["k"][blocks], tensors["k_scale"][blocks], tensors["k_min"][blocks], self.bits)
        k = torch.where(full.bool(), quantized, self._res_blocks(tensors, blocks).float())
        v = decode_values(tensors["v"][blocks], tensors["v_scale"][blocks], tensors["v_min"][blocks], self.bits)
        return k, v

    def read(self, tensors, blocks):
        k, v = self.read_fp32(tensors, blocks)
        return k.to(self.model_dtype), v.to(self.model_dtype)

    def views(self, tensors, table, first, ctx):
        """The query at entry p sees each block as decoding would have left it when p was
        written: blocks that end at or before p quantized, its own block's keys exact unless p is
        that block's last entry. So a prefill chunk computes what decoding its tokens one by one
        would (up to float rounding), whatever the chunking. Pieces start at first and at every
        block's last entry; within one, keys before block e = (q_first + 1) // bs are quantized
        and block e's rows are the residual."""
        bs = self.block_size
        n = -(-ctx // bs)
        shape = (-1, self.num_kv_heads, self.head_dim)
        k, v = (x.reshape(shape) for x in self.read(tensors, table[:n]))
        if ctx - first == 1:
            return [(first, ctx, k[:ctx], v[:ctx])]
        res = self._res_blocks(tensors, table[:n]).reshape(shape).to(self.model_dtype)
        pieces, p = [], first
        while p < ctx:
            e = (p + 1) // bs
            end = min(ctx, (e + 1) * bs - 1)
            keys = k[:end] if e * bs >= end else torch.cat([k[:e * bs], res[e * bs:end]])
            pieces.append((p, end, keys, v[:end]))
            p = end
        return pieces


@KV_CODECS.register("kivi4")
class Kivi4Codec(KiviCodec):
    name, bits = "kivi4", 4


@KV_CODECS.register("kivi2")
class Kivi2Codec(KiviCodec):
    name, bits = "kivi2", 2


@KV_CODECS.register("kivi4-fp16")
class Kivi4Fp16Codec(KiviCodec):
    """kivi4 with fp16 scales and minimums (half their bytes)."""
    name, bits, stat_dtype = "kivi4-fp16", 4, torch.float16


@KV_CODECS.register("kivi2-fp16")
class Kivi2Fp16Codec(KiviCodec):
    name, bits, stat_dtype = "kivi2-fp16", 2, torch.float16


@KV_CODECS.register("kivi4-fp16-v64")
class Kivi4Fp16V64Codec(KiviCodec):
    """kivi4-fp16 with one value scale and minimum per 64 channels (the default model's whole head)."""
    name, bits, stat_dtype, value_group_size = "kivi4-fp16-v64", 4, torch.float16, 64
