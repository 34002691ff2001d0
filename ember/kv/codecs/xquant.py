"""`xquant4`, `xquant2` (and `-g64`, `-fp16`, `-g16-fp16` variants): XQuant (Tomar et al. 2025, arXiv
2508.10395; no public code) in its GQA form: each KV entry is stored as a low-bit latent of the
layer input X, and K and V are computed again from it when attention reads the cache.

The latent. With W = [W_k W_v] (hidden x 2*Hkv*D; 576 x 384 on the default model) and its SVD
W = U S V^T (U: hidden x r, r = min(hidden, 2*Hkv*D)), the paper caches X U (r values a token)
and rematerializes [K_pre, V] = (X U) S V^T, K_pre being K before RoPE. Since
[K_pre, V] = X W = X U S V^T, the same latent is X U = ([K_pre, V] - b) V S^-1 (b: the K/V
bias, zero in Llama): it is computed from the K and V the layer already produced, with one fixed
r x r matrix per layer, so the model code needs no change and X itself never reaches the cache.
K arrives rotated; the codec undoes RoPE at the row's position before projecting, and applies
it again at read time, so each entry stores its int32 RoPE position (counted in the bytes;
`needs_positions`). W comes from the layer's own projection at load (`bind_layer`: the
LinearMethod applied to the identity, so whatever it stores, the dequantized weights it
computes with), built once per layer in fp32. With a method that also rounds its activations
(`int4` here: its K/V differ from X W by up to 0.6% of their range), the stored latent is the
exact rotation of the K and V the model computed, ([K_pre, V] - b) V S^-1, rather than X U:
unquantized, it reads back the model's K and V either way.

Why not plain XQuant (cache X, 576 values) here: on this model X is wider than K + V (576 > 384
values a token), so caching X costs more than caching K and V at the same bits; and X can't be
recovered from K and V (rank 384 < 576), so it would need the layer input passed through the
attention seam. It is not built; benchmarks/README.md ("XQuant") gives its bytes by count.

Quantization (as KIVI quantizes values): per token, in groups of G channels of the latent
(G = 32, `-g64`: 64, `-g16-fp16`: 16 with fp16 statistics, the bytes of G = 32 with fp32
ones), asymmetric: scale = (max - min) / (2^bits - 1), code = round((x - min) /
scale) clamped, x' = code * scale + min (kivi.quantize). Scales and minimums fp32 (`-fp16`:
fp16). Latent channels come in the order of the singular values, so a group holds channels of
similar magnitude. No full-precision residual window: a row needs no other row, so every
entry is quantized as written, partial blocks too, and prefill queries read their own chunk's
entries quantized, as decoding does (chunking changes nothing that is stored or read).

Per block (bs tokens, r latent channels, G a group, b bits):
  x               uint8 [bs, r*b/8]   packed codes, channel c at bit b*c (kivi.pack)
  x_scale, x_min  fp32  [bs, r/G]     (-fp16: fp16)
  pos             int32 [bs]          the entry's RoPE position
On the default model (30 layers, r = 384): xquant4 292 B a token and layer (8,760 B/token; bf16
K/V 23,040, 2.63x; fp32 K/V 46,080, 5.26x), xquant2 196 (5,880), xquant4-fp16 244 (7,320).

Beside the blocks, the codec holds two fp32 r x r maps per layer (1.2 MB each layer on the
default model, 35 MB for 30 layers; not counted in the KV bytes, as the weights are not) and
one fp32 copy of the RoPE tables.

The fused C step reads and writes this layout (csrc/attention_paged.h's XQUANT4/XQUANT2 kinds,
`native_kind`): it computes each new row's latent and quantizes it as `write` does (a code may
differ by one step where float summation order moves a latent across a rounding boundary),
and computes K and V again from the latents inside its attention, with the value projection
applied once per query head to the probability-weighted latent. It takes decode steps only
(prefill chunks stay on the PyTorch path, which decodes a layer's entries once per chunk). A
press (which writes entries without their positions) is refused.
`encode`/`decode` below, over the bound matrices, and xquant_ref.py (independent of this file)
are the references.
"""

from __future__ import annotations

import torch

from ember.kv.codecs.base import KV_CODECS, KVCodec
from ember.kv.codecs.kivi import pack, quantize, unpack


def kv_weights(model, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer `index`'s K/V projection as the model computes it: (W [hidden, 2*Hkv*D] fp32, bias
    [2*Hkv*D] fp32), so that [K_pre, V] = X W + bias; read by applying the layer's LinearMethod
    to the identity (whatever it stores, these are the weights it multiplies by)."""
    cfg, layer = model.cfg, model.layers[index]
    with torch.inference_mode():
        eye = torch.eye(cfg.hidden_size, dtype=model.dtype)
        zero = torch.zeros(1, cfg.hidden_size, dtype=model.dtype)
        bias = layer.qkv_proj(zero).float()[0, cfg.q_size:]
        w = layer.qkv_proj(eye).float()[:, cfg.q_size:] - bias
    return w, bias


def latent_maps(w: torch.Tensor, rel_floor: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From W [hidden, n] (n = 2*Hkv*D): (to_latent [n, n], from_latent [n, n], S [r]) with
    latent = [K_pre, V] @ to_latent = X U (padded with zeros to n channels where r < n) and
    [K_pre, V] = latent @ from_latent. Singular values below rel_floor * S_max are dropped."""
    n = w.shape[1]
    # One thread: LAPACK's SVD of a matrix this small is a long run of tiny parallel regions; on
    # a busy machine two threads spin against each other at each (measured 4 s a layer against
    # 0.03 s with one, 2 cores shared with another job).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)  # vh: [r, n]
    finally:
        torch.set_num_threads(threads)
    keep = s > rel_floor * s[0]
    inv = torch.where(keep, 1 / s, torch.zeros_like(s))
    to_latent = torch.zeros(n, n, dtype=torch.float64)
    from_latent = torch.zeros(n, n, dtype=torch.float64)
    r = s.shape[0]
    to_latent[:, :r] = vh.T * inv  # V S^-1
    from_latent[:r] = s[:, None] * vh  # S V^T
    return to_latent.float(), from_latent.float(), s.float()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """RoPE (rotate-half) on x [..., Hkv, D] with cos/sin [..., D]; inverse: undo it."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    s = sin.unsqueeze(-2)
    return x * cos.unsqueeze(-2) + (-rotated * s if inverse else rotated * s)


class XQuantCodec(KVCodec):
    bits: int
    group = 32
    stat_dtype = torch.float32
    needs_positions = True

    @property
    def native_kind(self) -> str | None:
        # csrc/attention_paged.h: codes widened 8 at a time (groups of a multiple of 8 channels),
        # a latent of at most XQ_MAX_WIDTH channels (buffers on the stack)
        fits = self.group % 8 == 0 and self.width <= 4096
        return f"xquant{self.bits}" if fits else None  # fp16 statistics: the layout's stats_f16

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.width = 2 * self.num_kv_heads * self.head_dim
        if self.width % self.group or (self.width * self.bits) % 8:
            raise ValueError(f"{self.name}: {self.width} latent channels do not split into groups of {self.group}")

    def tensor_specs(self):
        bs, g = self.block_size, self.width // self.group
        return {"x": ((bs, self.width * self.bits // 8), torch.uint8),
                "x_scale": ((bs, g), self.stat_dtype), "x_min": ((bs, g), self.stat_dtype),
                "pos": ((bs,), torch.int32)}

    def bind_layer(self, tensors, model, index):
        w, bias = kv_weights(model, index)
        to_latent, from_latent, _ = latent_maps(w)
        if getattr(self, "_rope_model", None) is not model:  # one fp32 copy of the tables for all layers
            self._rope_model, self._cos, self._sin = model, model.cos.float(), model.sin.float()
        tensors |= {"xq_to_latent": to_latent, "xq_from_latent": from_latent, "xq_bias": bias,
                    "xq_cos": self._cos, "xq_sin": self._sin}

    def _bound(self, tensors):
        if "xq_to_latent" not in tensors:
            raise RuntimeError(f"the {self.name!r} KV cache is not bound to a model (PagedKVCache.bind_model)")
        return tensors

    # --- the latent -------------------------------------------------------------------------------
    def encode(self, tensors, k, v, positions) -> torch.Tensor:
        """Rows k (rotated), v [T, Hkv, D] at `positions` [T] -> the latent [T, width] fp32."""
        t = self._bound(tensors)
        p = positions.long()
        k_pre = rotate(k.float(), t["xq_cos"][p], t["xq_sin"][p], inverse=True)
        kv = torch.cat([k_pre.flatten(1), v.float().flatten(1)], dim=1)
        return (kv - t["xq_bias"]) @ t["xq_to_latent"]

    def decode(self, tensors, latent, positions) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent [..., width] at `positions` [...] -> K (rotated), V [..., Hkv, D] fp32."""
        t = self._bound(tensors)
        kv = latent @ t["xq_from_latent"] + t["xq_bias"]
        h, d = self.num_kv_heads, self.head_dim
        k_pre, v = kv[..., :h * d].unflatten(-1, (h, d)), kv[..., h * d:].unflatten(-1, (h, d))
        p = positions.long()
        return rotate(k_pre, t["xq_cos"][p], t["xq_sin"][p]), v

    def quantize(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """latent [..., width] -> (packed codes, scale, min), per row and group of channels."""
        codes, scale, mn = quantize(latent.unflatten(-1, (-1, self.group)), -1, self.bits, self.stat_dtype)
        return pack(codes.flatten(-2), self.bits), scale.to(self.stat_dtype), mn.to(self.stat_dtype)

    def dequantize(self, packed, scale, mn) -> torch.Tensor:
        codes = unpack(packed, self.bits).float().unflatten(-1, (-1, self.group))
        return (codes * scale.float().unsqueeze(-1) + mn.float().unsqueeze(-1)).flatten(-2)

    # --- the seam ---------------------------------------------------------------------------------
    def write(self, tensors, slots, k, v, positions=None):
        if positions is None:
            raise ValueError(f"{self.name}: a write needs the rows' RoPE positions")
        codes, scale, mn = self.quantize(self.encode(tensors, k, v, positions))
        tensors["x"].view(-1, codes.shape[-1]).index_copy_(0, slots, codes)
        tensors["x_scale"].view(-1, scale.shape[-1]).index_copy_(0, slots, scale)
        tensors["x_min"].view(-1, mn.shape[-1]).index_copy_(0, slots, mn)
        tensors["pos"].view(-1).index_copy_(0, slots, positions.to(torch.int32))

    def read_fp32(self, tensors, blocks):
        latent = self.dequantize(tensors["x"][blocks], tensors["x_scale"][blocks], tensors["x_min"][blocks])
        return self.decode(tensors, latent, tensors["pos"][blocks])

    def read(self, tensors, blocks):
        k, v = self.read_fp32(tensors, blocks)
        return k.to(self.model_dtype), v.to(self.model_dtype)


def _register(name: str, bits: int, group: int = 32, stat_dtype: torch.dtype = torch.float32) -> None:
    cls = type(f"XQuant_{name.replace('-', '_')}", (XQuantCodec,),
               {"name": name, "bits": bits, "group": group, "stat_dtype": stat_dtype})
    KV_CODECS.register(name)(cls)


for _bits in (4, 2):
    _register(f"xquant{_bits}", _bits)
    _register(f"xquant{_bits}-g64", _bits, 64)
    _register(f"xquant{_bits}-fp16", _bits, 32, torch.float16)
    _register(f"xquant{_bits}-g16-fp16", _bits, 16, torch.float16)  # xquant{bits}'s bytes, finer groups
