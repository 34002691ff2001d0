"""`int4`: weight-only 4-bit, group-wise (32 inputs per group) with a scale and a zero point.

w ~= (q - 8) * scale + zero with q in 0..15, one bf16 (scale, zero) per group of 32 inputs of
each output row. Groups of 32 line up with GGUF's Q4_0/Q4_1 blocks, so a Q4_1 tensor
(w = q * d + m) dequantized at load is requantized onto the same grid (zero = m + 8 d) with
little or no loss. Two packings, chosen at load:
- for the C kernels (csrc/linear.h): `codes` uint8 [N, K/2] in the nibble order of
  `pack_nibbles` (8 codes per zero-extension) and `scale_zero_rows` bf16 [N, K/32, 2], 0.625
  bytes per weight streamed. At batch 1-4 (decode) activations are quantized to int8 per group
  of 32 (`q8.quantize_q8`, llama.cpp's Q8_0) and multiplied as integers (csrc/linear_q8.h):
  widening 4-bit codes to fp32 costs more instructions than streaming them takes time.
  Batches of 5-63 keep fp32 activations, the weight decoded once per row into L1;
- without them: `aten._convert_weight_to_int4pack_for_cpu`'s layout for
  `aten._weight_int4pack_mm_for_cpu`, which wants bf16 activations (its fp32 path is a slow
  fallback), so x is cast to bf16 and the result back.
Large batches (prefill) dequantize to x's dtype and use the dense GEMM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kernels import native
from ember.kernels.linear.base import LINEAR_METHODS, WeightOnlyLinear, fp32_linear
from ember.kernels.linear.q8 import MAX_ROWS, quantize_q8

KERNEL_DTYPE = torch.bfloat16
GROUP = 32
BLOCK_N = 32  # the CPU pack interleaves rows in blocks of 32 (checked by unpack_int4's test)


def quantize_int4(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min/max per group -> codes int32 [N, K] in 0..15, scale and zero [N, K/group].

    Scale and zero are rounded to the kernel dtype before the codes are chosen, so the codes
    are the nearest ones under the (scale, zero) the kernel will really use."""
    n, k = weight.shape
    if k % group:
        raise ValueError(f"int4 needs the input size ({k}) to be a multiple of the group size {group}")
    w = weight.float().view(n, k // group, group)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8).to(KERNEL_DTYPE)
    zero = (lo + 8 * scale.float()).to(KERNEL_DTYPE)
    q = torch.round((w - zero.float()[..., None]) / scale.float()[..., None] + 8).clamp(0, 15)
    return q.to(torch.int32).view(n, k), scale, zero


def unpack_int4(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Codes int32 [N, K] back from the CPU kernel's packing: byte [N/32, K, 16] holds row i of
    a 32-row block in its low nibble and row 16 + i in its high nibble."""
    b = packed.reshape(n // BLOCK_N, k, BLOCK_N // 2)
    rows = torch.cat([b & 15, b >> 4], dim=-1)  # [N/32, K, 32]
    return rows.permute(0, 2, 1).reshape(n, k).to(torch.int32)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """Codes [N, K] in 0..15 -> uint8 [N, K/2]: in each group of 32, byte j < 8 holds codes j
    (low nibble) and j + 8, byte 8 + j holds codes 16 + j and 24 + j (csrc/linear.h)."""
    n, k = q.shape
    g = q.to(torch.uint8).view(n, k // GROUP, 4, 8)
    return (g[:, :, 0::2] | (g[:, :, 1::2] << 4)).reshape(n, k // 2).contiguous()


def unpack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    n, k = codes.shape[0], codes.shape[1] * 2
    b = codes.view(n, k // GROUP, 2, 8)
    return torch.stack([b[:, :, 0] & 15, b[:, :, 0] >> 4, b[:, :, 1] & 15, b[:, :, 1] >> 4], 2).reshape(n, k).to(torch.int32)


def codes_scales_zeros(params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes int32 [N, K] and fp32 scale, zero [N, K/group] from either packing."""
    if "codes" in params:
        sz = params["scale_zero_rows"].float()  # [N, K/group, 2]
        return unpack_nibbles(params["codes"]), sz[..., 0], sz[..., 1]
    sz = params["scale_zero"].float()  # [K/group, N, 2]
    groups, n = sz.shape[0], sz.shape[1]
    return unpack_int4(params["qweight"], n, groups * GROUP), sz[..., 0].t(), sz[..., 1].t()


def dequantize_int4(params: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    q, scale, zero = codes_scales_zeros(params)
    n, k = q.shape
    q = q.float().view(n, k // GROUP, GROUP)
    return ((q - 8) * scale[..., None] + zero[..., None]).view(n, k).to(dtype)


def reference_apply(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain torch for either kernel at x's batch size: dequantize, then F.linear in fp32, on
    the activations the kernel sees (int8 per group up to 4 rows for the C kernels; bf16-rounded
    for the aten kernel)."""
    x2 = x.reshape(-1, x.shape[-1])
    if "codes" not in params:
        x2 = x2.to(KERNEL_DTYPE)
    elif x2.shape[0] <= MAX_ROWS:
        x2 = quantize_q8(x2)
    return fp32_linear(x2, dequantize_int4(params), params, x.dtype).view(*x.shape[:-1], -1)


@LINEAR_METHODS.register("int4")
class Int4Linear(WeightOnlyLinear):
    name = "int4"
    # The tied output head keeps 8 bits: it is a Q8_0 tensor in the GGUF, and 4 bits there cost
    # more perplexity than all 30 layers' projections together (benchmarks/README.md).
    head_method = "int8"

    def __init__(self, use_native: bool | None = None):
        super().__init__()
        self.use_native = native.available() if use_native is None else use_native

    def pack(self, weight, bias, dtype):
        q, scale, zero = quantize_int4(weight)
        if self.use_native:
            params = {"codes": pack_nibbles(q), "scale_zero_rows": torch.stack([scale, zero], dim=-1).contiguous()}
        else:
            if q.shape[0] % BLOCK_N:
                raise ValueError(f"int4 needs the output size ({q.shape[0]}) to be a multiple of {BLOCK_N}")
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            params = {"qweight": packed, "scale_zero": torch.stack([scale.t(), zero.t()], dim=-1).contiguous()}
        return self.add_bias(params, bias, dtype)

    def dequantize(self, params, dtype):
        return dequantize_int4(params, dtype)

    def native_weight(self, params, with_bias=True):
        if "codes" not in params:
            return None
        c = params["codes"]
        return native.weight(native.INT4, c, c.shape[0], c.shape[1] * 2, sz=params["scale_zero_rows"],
                             bias=params.get("bias") if with_bias else None, q8_activations=True)

    def fallback(self, x2, params):
        if "codes" in params:  # packed for C kernels that are not here after all
            return F.linear(x2, dequantize_int4(params, x2.dtype))
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(KERNEL_DTYPE), params["qweight"], GROUP,
                                                          params["scale_zero"])
