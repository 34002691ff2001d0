"""Bit planes with a scale each (the C kinds planes1..planes4, csrc/linear_planes.h), and the
round-to-nearest widths that need them: `tmac-w1`, `tmac-w3`.

w = sum_i plane_scale_i bit_i + minimum per group of 64 inputs: binary-coding quantization
(bcq.py) and odd-width round-to-nearest codes (plane_scale_i = 2^i scale), whose planes can't
be paired inside byte pairs as tmac.py's kernel pairs them. Storage (blocks of 32 output rows,
`pack_scaled_planes`): `lut_codes` uint8 [N/32, K/64, P, 8, 32], `lut_plane_scales` fp16
[N/32, K/64, P + 1, 32] (the planes' scales, then the minimums): P/8 + (P + 1)/32 bytes per
weight (1.5 bits at w1, 4 at w3). The reference is tmac_ref.lut_linear, as for tmac.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kernels import native
from ember.kernels.linear.base import LINEAR_METHODS, WeightOnlyLinear
from ember.kernels.linear.tmac_ref import GROUP, SCALE_DTYPE, code_plane_scales, lut_linear, quantize_rtn, table_indices

ROWS = 32  # output rows per block of the C kernel


def pack_scaled_planes(bits: torch.Tensor, plane_scales: torch.Tensor, minimum: torch.Tensor) -> dict[str, torch.Tensor]:
    """Bit planes {0, 1} [P, N, K], fp16 plane_scales [P, N, K/64] and minimum [N, K/64] -> the
    kernel's blocks: byte 2e + h of `lut_codes[b, g, i, j]` holds row 32b + e + 16h's plane-i
    index of table 16g + 2j (low nibble) and 16g + 2j + 1 (high nibble)."""
    planes, n, k = bits.shape
    nb, g = n // ROWS, k // GROUP
    idx = torch.stack([table_indices(bits[i].to(torch.int32), 1)[0] for i in range(planes)]).to(torch.uint8)
    v = idx.view(planes, nb, 2, 16, g, 8, 2).permute(1, 4, 0, 5, 3, 2, 6)  # [b, g, i, j, e, h, nibble]
    codes = (v[..., 0] | (v[..., 1] << 4)).reshape(nb, g, planes, 8, 2 * 16).contiguous()
    sm = torch.cat([plane_scales, minimum[None]]).view(planes + 1, nb, ROWS, g).permute(1, 3, 0, 2).contiguous()
    return {"lut_codes": codes, "lut_plane_scales": sm}


def unpack_scaled_planes(params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Table indices int64 [P, N, K/4], plane scales [P, N, K/64], minimum [N, K/64]."""
    codes, sm = params["lut_codes"], params["lut_plane_scales"]
    nb, g, planes = codes.shape[:3]
    c = codes.view(nb, g, planes, 8, 16, 2)
    v = torch.stack([c & 15, c >> 4], dim=-1)  # [b, g, i, j, e, h, nibble]
    idx = v.permute(2, 0, 5, 4, 1, 3, 6).reshape(planes, nb * ROWS, g * GROUP // 4).long()
    s = sm.permute(2, 0, 3, 1).reshape(planes + 1, nb * ROWS, g)
    return idx, s[:planes], s[planes]


def dequantize_scaled_planes(params: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    idx, scales, minimum = unpack_scaled_planes(params)
    planes, n, t = idx.shape
    bits = torch.stack([(idx >> j) & 1 for j in range(4)], dim=-1).view(planes, n, 4 * t).double()
    w = minimum.double().repeat_interleave(GROUP, dim=1)
    for i in range(planes):
        w = w + bits[i] * scales[i].double().repeat_interleave(GROUP, dim=1)
    return w.to(dtype)


def reference_apply(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    idx, scales, minimum = unpack_scaled_planes(params)
    y = lut_linear(x.reshape(-1, x.shape[-1]).float(), idx, scales, minimum)
    if "bias" in params:
        y = y + params["bias"].double()
    return y.to(x.dtype).view(*x.shape[:-1], -1)


class ScaledPlanesLinear(WeightOnlyLinear):
    """Bit planes with a scale each, read through activation lookup tables (planes1..4)."""

    bits = 1
    head_method = "int8"  # the tied head keeps 8 bits, as with int4

    def quantize(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> bits {0, 1} uint8 [P, N, K], fp16 plane scales [P, N, K/64], fp16 minimum [N, K/64]."""
        raise NotImplementedError

    def pack(self, weight, bias, dtype):
        if weight.shape[0] % ROWS:
            raise ValueError(f"{self.name} needs the output size ({weight.shape[0]}) to be a multiple of {ROWS}")
        return self.pack_parts(self.quantize(weight), bias, dtype)

    def pack_parts(self, parts, bias, dtype):
        """`quantize`'s (planes, plane scales, minimum), from it or from a calibrated quantizer
        (quant/gptq.py), -> the kernel's storage."""
        return self.add_bias(pack_scaled_planes(*parts), bias, dtype)

    def dequantize(self, params, dtype):
        return dequantize_scaled_planes(params, dtype)

    def packed_bytes(self, out_features, in_features, dtype):
        return out_features * in_features * self.bits // 8 + out_features * (in_features // GROUP) * 2 * (self.bits + 1)

    def native_weight(self, params, with_bias=True):
        c = params["lut_codes"]
        return native.weight(f"planes{self.bits}", c, c.shape[0] * ROWS, c.shape[1] * GROUP,
                             sm=params["lut_plane_scales"], bias=params.get("bias") if with_bias else None)

    def kernel_takes_large_batches(self, params):
        return native.available()

    def fallback(self, x2, params):
        return F.linear(x2, dequantize_scaled_planes(params, x2.dtype))

    def energy_model(self) -> dict:
        return {"linear": "lut", "lut_planes": self.bits, "lut_weight_bits": self.bits + 16 * (self.bits + 1) / GROUP}


def rtn_planes(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest codes (tmac_ref.quantize_rtn) as planes: plane i weighs 2^i scale (exact
    in fp16: a power of two times an fp16 number)."""
    q, scale, minimum = quantize_rtn(weight, bits)
    planes = torch.stack([((q >> i) & 1).to(torch.uint8) for i in range(bits)])
    return planes, code_plane_scales(scale, bits).to(SCALE_DTYPE), minimum


class RtnPlanesLinear(ScaledPlanesLinear):
    """Round-to-nearest codes as planes (T-MAC's odd widths)."""

    def quantize(self, weight):
        return rtn_planes(weight, self.bits)


@LINEAR_METHODS.register("tmac-w1")
class TmacW1(RtnPlanesLinear):
    name = "tmac-w1"
    bits = 1


@LINEAR_METHODS.register("tmac-w3")
class TmacW3(RtnPlanesLinear):
    name = "tmac-w3"
    bits = 3
