"""`fp8-e4m3`, `fp8-e5m2`: K and V as fp8 codes with one scale per block and KV head.

Codes are exactly what ember/numerics/minifloat.py encodes (round to nearest even). The
scale is a power of two, the smallest with max|x| / scale <= the format's largest value, so
nothing overflows and dividing by it is exact. A block fills over several writes; when new
rows need a larger scale, the rows already there are re-encoded at the new one (an exponent
shift: exact except where a value drops into the subnormals), which keeps the result
independent of how the rows were split into writes up to that rounding.
"""

from __future__ import annotations

import torch

from ember.kv.codecs.base import KV_CODECS, KVCodec
from ember.numerics.minifloat import MiniFloat, fp8_e4m3, fp8_e5m2


def pow2_scale(amax: torch.Tensor, fmax: float) -> torch.Tensor:
    """The smallest power of two s with amax / s <= fmax (0 where amax is 0)."""
    ratio = amax.float() / fmax
    mantissa, exponent = torch.frexp(ratio)
    exponent = exponent - (mantissa == 0.5).to(exponent.dtype)  # an exact power of two stays itself
    return torch.where(amax > 0, torch.ldexp(torch.ones_like(ratio), exponent), torch.zeros_like(ratio))


class Fp8Codec(KVCodec):
    fmt: MiniFloat

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fmax = self.fmt.max_value
        self.table = self.fmt.decode(torch.arange(256, dtype=torch.uint8)).contiguous()  # code -> value

    def tensor_specs(self):
        data = (self.block_size, self.num_kv_heads, self.head_dim)
        return {"k": (data, torch.uint8), "v": (data, torch.uint8),
                "k_scale": ((self.num_kv_heads,), torch.float32), "v_scale": ((self.num_kv_heads,), torch.float32)}

    def write(self, tensors, slots, k, v):
        for name, x in (("k", k), ("v", v)):
            self._write_one(tensors[name], tensors[name + "_scale"], slots, x.float())

    def _write_one(self, data: torch.Tensor, scale: torch.Tensor, slots: torch.Tensor, x: torch.Tensor) -> None:
        bs = self.block_size
        blocks, offsets = slots // bs, slots % bs
        touched, row_block = torch.unique(blocks, return_inverse=True)
        fresh = torch.zeros(len(touched), dtype=torch.bool)
        fresh[row_block[offsets == 0]] = True
        old = torch.where(fresh[:, None], 0.0, scale[touched])  # [U, Hkv]
        row_amax = x.abs().amax(-1)  # [T, Hkv]
        amax = torch.zeros_like(old).scatter_reduce_(0, row_block[:, None].expand_as(row_amax), row_amax, "amax")
        new = torch.maximum(old, pow2_scale(amax, self.fmax))
        grown = (new > old) & (old > 0)
        if bool(grown.any()):
            b, h = grown.nonzero(as_tuple=True)
            ratio = (old[b, h] / new[b, h])[:, None]  # a power of two: exact
            rows = data[touched[b], :, h]  # [G, bs, D]
            data[touched[b], :, h] = self.fmt.encode(self.fmt.decode(rows) * ratio[..., None])
        scale[touched] = new
        row_scale = new[row_block]  # [T, Hkv]
        safe = torch.where(row_scale > 0, row_scale, torch.ones_like(row_scale))
        codes = self.fmt.encode(x / safe[..., None])
        data.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, slots, codes)

    def read(self, tensors, blocks):
        table = self.table

        def one(name):
            values = table[tensors[name][blocks].int()]  # [..., bs, Hkv, D]
            return (values * tensors[name + "_scale"][blocks][..., None, :, None]).to(self.model_dtype)
        return one("k"), one("v")


@KV_CODECS.register("fp8-e4m3")
class Fp8E4M3Codec(Fp8Codec):
    name, native_kind, fmt = "fp8-e4m3", "fp8_e4m3", fp8_e4m3()


@KV_CODECS.register("fp8-e5m2")
class Fp8E5M2Codec(Fp8Codec):
    name, native_kind, fmt = "fp8-e5m2", "fp8_e5m2", fp8_e5m2()
