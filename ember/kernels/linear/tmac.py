"""`tmac-w2`, `tmac-w4`: weight-only 2- and 4-bit through T-MAC's lookup tables.

Weights are quantized round-to-nearest per group of 64 inputs (asymmetric: fp16 scale and
minimum, tmac_ref.quantize_rtn) and stored as bit planes, never dequantized: the C kernel
(csrc/linear_tmac.h) builds int8 tables of activation sums and adds up byte lookups
(vpshufb), at every batch size, so prefill runs on it too and the fused step takes prefill
chunks. Storage (blocks of 16 output rows; `pack_planes`): `lut_codes` uint8
[N/16, K/64, bits/2, 8, 32], `lut_scale_min` fp16 [N/16, K/64, 2, 16]: bits/8 + 0.5/8 bytes
per weight (2.5 bits at w2, 4.5 at w4). The kernel adds planes in pairs inside one byte pair;
odd widths (`tmac-w1`, `tmac-w3`) run planes.py's kernel, a scale per plane, instead.
The reference is tmac_ref.lut_linear (the same tables, int8 quantization and lookups in
float64); without the C kernels, the dequantized weight goes through F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kernels import native
from ember.kernels.linear.base import LINEAR_METHODS, WeightOnlyLinear
from ember.kernels.linear.tmac_ref import (GROUP, code_plane_scales, dequantize, lut_linear, quantize_rtn,
                                           table_indices)

ROWS = 16  # output rows per block of the C kernel
TABLES_PER_GROUP = GROUP // 4


def pack_planes(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """Codes [N, K] and (scale, minimum) [N, K/64] -> the kernel's blocks: byte 2r + h of
    `lut_codes[b, g, p, j]` holds, for row 16b + r and plane 2p + h, the table index of
    table 16g + 2j in its low nibble and of table 16g + 2j + 1 in its high one."""
    n, k = q.shape
    nb, g, pairs = n // ROWS, k // GROUP, bits // 2
    idx = table_indices(q, bits).to(torch.uint8)  # [bits, N, K/4]
    v = idx.view(pairs, 2, nb, ROWS, g, 8, 2).permute(2, 4, 0, 5, 3, 1, 6)  # [b, g, p, j, r, h, nibble]
    codes = (v[..., 0] | (v[..., 1] << 4)).reshape(nb, g, pairs, 8, 2 * ROWS).contiguous()
    sm = torch.stack([scale, minimum]).view(2, nb, ROWS, g).permute(1, 3, 0, 2).contiguous()
    return {"lut_codes": codes, "lut_scale_min": sm}


def unpack_planes(params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of pack_planes: table indices int64 [bits, N, K/4], scale and minimum [N, K/64]."""
    codes, sm = params["lut_codes"], params["lut_scale_min"]
    nb, g, pairs = codes.shape[:3]
    c = codes.view(nb, g, pairs, 8, ROWS, 2)
    v = torch.stack([c & 15, c >> 4], dim=-1)  # [b, g, p, j, r, h, nibble]
    idx = v.permute(2, 5, 0, 4, 1, 3, 6).reshape(2 * pairs, nb * ROWS, g * TABLES_PER_GROUP).long()
    s = sm.permute(2, 0, 3, 1).reshape(2, nb * ROWS, g)
    return idx, s[0], s[1]


def codes_from_indices(idx: torch.Tensor) -> torch.Tensor:
    """Table indices [bits, N, K/4] -> codes int32 [N, K]."""
    bits, n, t = idx.shape
    planes = torch.stack([(idx >> j) & 1 for j in range(4)], dim=-1).view(bits, n, 4 * t)
    return sum(planes[i] << i for i in range(bits)).to(torch.int32)


def dequantize_planes(params: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    idx, scale, minimum = unpack_planes(params)
    return dequantize(codes_from_indices(idx), scale, minimum).to(dtype)


def reference_apply(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the kernel computes, in plain torch (tmac_ref.lut_linear) plus the bias."""
    idx, scale, minimum = unpack_planes(params)
    x2 = x.reshape(-1, x.shape[-1]).float()
    y = lut_linear(x2, idx, code_plane_scales(scale, idx.shape[0]), minimum)
    if "bias" in params:
        y = y + params["bias"].double()
    return y.to(x.dtype).view(*x.shape[:-1], -1)


class LutLinear(WeightOnlyLinear):
    """Bit planes read through activation lookup tables (the C kinds tmac2, tmac4)."""

    bits = 2
    head_method = "int8"  # the tied head keeps 8 bits, as with int4: it is 49152 x 576

    def quantize(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """codes [N, K], fp16 scale and minimum [N, K/64], w ~= q * scale + minimum."""
        return quantize_rtn(weight, self.bits)

    def pack(self, weight, bias, dtype):
        n = weight.shape[0]
        if n % ROWS:
            raise ValueError(f"{self.name} needs the output size ({n}) to be a multiple of {ROWS}")
        return self.pack_parts(self.quantize(weight), bias, dtype)

    def pack_parts(self, parts, bias, dtype):
        """`quantize`'s (codes, scale, minimum), from it or from a calibrated quantizer
        (quant/gptq.py), -> the kernel's storage."""
        return self.add_bias(pack_planes(*parts, self.bits), bias, dtype)

    def dequantize(self, params, dtype):
        return dequantize_planes(params, dtype)

    def packed_bytes(self, out_features, in_features, dtype):
        return out_features * in_features * self.bits // 8 + out_features * (in_features // GROUP) * 4

    def native_weight(self, params, with_bias=True):
        c = params["lut_codes"]
        return native.weight(f"tmac{self.bits}", c, c.shape[0] * ROWS, c.shape[1] * GROUP,
                             sm=params["lut_scale_min"], bias=params.get("bias") if with_bias else None)

    def kernel_takes_large_batches(self, params):
        # The lookups serve prefill too: no dequantized copy of the weight is ever made.
        return native.available()

    def fallback(self, x2, params):
        return F.linear(x2, dequantize_planes(params, x2.dtype))

    def energy_model(self) -> dict:
        return {"linear": "lut", "lut_planes": self.bits, "lut_weight_bits": self.bits + 32 / GROUP}


@LINEAR_METHODS.register("tmac-w2")
class TmacW2(LutLinear):
    name = "tmac-w2"
    bits = 2


@LINEAR_METHODS.register("tmac-w4")
class TmacW4(LutLinear):
    name = "tmac-w4"
    bits = 4
