"""`bfp4`, `bfp8`: block floating point (arXiv 2403.20137): each token's K and V rows, per KV
head, in groups of 32 channels sharing one 8-bit power-of-two exponent, with 4- or 8-bit
sign-magnitude mantissas (ember/numerics/bfp.py: round to nearest even, the group's largest
value using the top mantissa bit). `bfp4-g64`, `bfp8-g64`: the same with groups of 64 channels
(the paper's other block size; a whole head at head_dim 64), half the exponent bytes. Per-token
groups make the contents independent of how a sequence's tokens were split into writes, and
need no residual.

bfp4 mantissas (-7..7) are stored as two's-complement nibbles, two per byte, channel 2i in
the low nibble. The paper also sorts key channels by norm (the same permutation folded into
W_q and W_k) so outlier channels share groups: `bfp4-sorted` below (PyTorch path only); the
other codecs group consecutive channels.

csrc/attention_paged.h's bfp kinds store the same bytes (held to `write` bit for bit) and
attend over the codes, scaling each group's partial sums by its power of two in registers.

Per block (Hkv heads, D channels, bs tokens, G = min(32 or 64, D)):
  k, v          int8 [bs, Hkv, D] (bfp8) or uint8 [bs, Hkv, D/2] (bfp4)
  k_exp, v_exp  int8 [bs, Hkv, D/G]
Bytes per token, K and V: 2 Hkv (D m/8 + D/G); at D = 64 that is 2 Hkv x 34 (bfp4), 33
(bfp4-g64), 66 (bfp8), 65 (bfp8-g64), against 2 Hkv x 128 for bf16.
"""

from __future__ import annotations

import torch

from ember.kv.codecs.base import KV_CODECS, KVCodec
from ember.numerics.bfp import bfp_decode, bfp_encode, BFPTensor


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes in -8..7 [..., D] -> uint8 [..., D/2], channel 2i in the low nibble."""
    c = (codes.to(torch.int16) & 0xF).reshape(*codes.shape[:-1], -1, 2)
    return (c[..., 0] | (c[..., 1] << 4)).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """pack_nibbles' inverse: int8 codes [..., 2n]."""
    p = packed.to(torch.int16)
    pair = torch.stack([p & 0xF, p >> 4], dim=-1)
    return torch.where(pair > 7, pair - 16, pair).to(torch.int8).flatten(-2)


class BFPCodec(KVCodec):
    mantissa_bits: int
    group_size = 32  # channels per shared exponent (fewer where the head is narrower)

    @property
    def native_kind(self) -> str | None:
        # the C kernels take 32 or 64 channels a group (ember_kv_layout.bfp_group), in 32-channel steps
        return f"bfp{self.mantissa_bits}" if self.head_dim % 32 == 0 and self.group in (32, 64) else None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = min(self.group_size, self.head_dim)
        if self.head_dim % self.group or self.head_dim * self.mantissa_bits % 8:
            raise ValueError(f"{self.name}: head_dim {self.head_dim} does not split into groups of {self.group}")

    def tensor_specs(self):
        bs, h, d = self.block_size, self.num_kv_heads, self.head_dim
        codes = ((bs, h, d), torch.int8) if self.mantissa_bits == 8 else ((bs, h, d // 2), torch.uint8)
        exps = ((bs, h, d // self.group), torch.int8)
        return {"k": codes, "v": codes, "k_exp": exps, "v_exp": exps}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [..., D] -> (stored codes, exponents [..., D/G])."""
        t = bfp_encode(x.float(), self.group, self.mantissa_bits)
        codes = t.codes.flatten(-2)
        return (codes if self.mantissa_bits == 8 else pack_nibbles(codes)), t.exponents

    def decode(self, codes: torch.Tensor, exps: torch.Tensor) -> torch.Tensor:
        q = codes if self.mantissa_bits == 8 else unpack_nibbles(codes)
        t = BFPTensor(q.reshape(*exps.shape, self.group), exps, self.mantissa_bits, self.head_dim)
        return bfp_decode(t).reshape(*exps.shape[:-1], self.head_dim)

    def write(self, tensors, slots, k, v):
        h = self.num_kv_heads
        for name, x in (("k", k), ("v", v)):
            codes, exps = self.encode(x)
            tensors[name].view(-1, h, codes.shape[-1]).index_copy_(0, slots, codes)
            tensors[name + "_exp"].view(-1, h, exps.shape[-1]).index_copy_(0, slots, exps)

    def read(self, tensors, blocks):
        return tuple(self.decode(tensors[n][blocks], tensors[n + "_exp"][blocks]).to(self.model_dtype)
                     for n in ("k", "v"))


@KV_CODECS.register("bfp4")
class BFP4Codec(BFPCodec):
    name, mantissa_bits = "bfp4", 4


@KV_CODECS.register("bfp8")
class BFP8Codec(BFPCodec):
    name, mantissa_bits = "bfp8", 8


@KV_CODECS.register("bfp4-g64")
class BFP4G64Codec(BFPCodec):
    name, mantissa_bits, group_size = "bfp4-g64", 4, 64


@KV_CODECS.register("bfp8-g64")
class BFP8G64Codec(BFPCodec):
    name, mantissa_bits, group_size = "bfp8-g64", 8, 64


CALIBRATION_TOKENS = 256


def key_channel_rms(model, tokens: int = CALIBRATION_TOKENS, seed: int = 0) -> torch.Tensor:
    """Each layer's stored (rotated) keys' RMS per KV head and channel [layers, Hkv, D], from one
    prefill of `tokens` seeded random token ids through the model with an uncompressed cache
    (the codec has no tokenizer at bind time; text ranks the channels somewhat differently:
    benchmarks/README.md, "Block floating point")."""
    from ember.kernels.attention import AttentionMetadata
    from ember.kv.cache import PagedKVCache

    cfg, bs = model.cfg, 16
    blocks = -(-tokens // bs)
    cache = PagedKVCache.create(cfg.num_layers, blocks, bs, cfg.num_kv_heads, cfg.head_dim, dtype=model.dtype)
    ids = torch.randint(cfg.vocab_size, (tokens,), generator=torch.Generator().manual_seed(seed))
    meta = AttentionMetadata([tokens], [tokens], torch.arange(tokens), torch.arange(blocks)[None])
    model(ids, torch.arange(tokens), meta, cache)
    keys = torch.stack([k.reshape(-1, cfg.num_kv_heads, cfg.head_dim)[:tokens].float() for k in cache.k])
    return keys.square().mean(1).sqrt()


def pairs_by_norm(rms: torch.Tensor) -> torch.Tensor:
    """rms [..., D] -> a permutation [..., D] of the channels: RoPE pairs (i, i + D/2), the
    largest pair first, each pair's two channels side by side. RoPE turns a pair's energy from
    one channel to the other as the position moves, so splitting a pair across groups would let
    an outlier visit either group; kept together, a group's largest value stays in the group."""
    half = rms.shape[-1] // 2
    pair = rms[..., :half].square() + rms[..., half:].square()
    order = pair.argsort(dim=-1, descending=True, stable=True)
    return torch.stack([order, order + half], dim=-1).flatten(-2)


@KV_CODECS.register("bfp4-sorted")
class BFP4SortedCodec(BFP4Codec):
    """bfp4 with each layer's key channels, per KV head, stored in order of their calibrated RMS
    (`bind_layer`: pairs_by_norm of key_channel_rms), so the outlier channels share groups and
    the rest keep their low bits: the BFP paper's sorting, done in the codec rather than folded
    into W_q and W_k (the model applies RoPE by channel index, so a permutation of the weights
    would need the tables permuted too). q.k is unchanged by permuting both, so `read` permutes
    the keys back and attention sees the channels in the model's order. Same bytes as bfp4. On
    the default model it loses more than bfp4 (benchmarks/README.md, "Block floating point")."""
    name = "bfp4-sorted"

    @property
    def native_kind(self) -> str | None:
        return None  # the C attention does not permute q: the PyTorch path reads it

    def bind_layer(self, tensors, model, index):
        if getattr(self, "_calibrated", None) is not model:  # one calibration prefill for all layers
            self._calibrated, self._rms = model, key_channel_rms(model)
        perm = pairs_by_norm(self._rms[index])  # [Hkv, D]: stored channel j holds channel perm[:, j]
        tensors |= {"k_perm": perm, "k_unperm": perm.argsort(dim=-1)}

    def _bound(self, tensors) -> dict[str, torch.Tensor]:
        if "k_perm" not in tensors:
            raise RuntimeError(f"the {self.name!r} KV cache is not bound to a model (PagedKVCache.bind_model)")
        return tensors

    def write(self, tensors, slots, k, v):
        perm = self._bound(tensors)["k_perm"]
        super().write(tensors, slots, k.gather(-1, perm.expand_as(k)), v)

    def read(self, tensors, blocks):
        unperm = self._bound(tensors)["k_unperm"]
        k, v = super().read(tensors, blocks)
        return k.gather(-1, unperm.expand_as(k)), v
