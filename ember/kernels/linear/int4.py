"""`int4`: weight-only 4-bit, group-wise (32 inputs per group) with a scale and a zero point.

w ~= (q - 8) * scale + zero with q in 0..15, one (scale, zero) per group of 32 inputs of each
output row: the form of `aten._weight_int4pack_mm_for_cpu`. Groups of 32 line up with GGUF's
Q4_0/Q4_1 blocks, so a Q4_1 tensor (w = q * d + m) dequantized at load is requantized onto the
same grid (zero = m + 8 d) with little or no loss. Weights are packed for the kernel at load
(`aten._convert_weight_to_int4pack_for_cpu`). The kernel wants bf16 activations, scales and
zeros (its fp32 path is a slow fallback), so x is cast to bf16 and the result back.
Large batches (prefill) unpack the codes, dequantize to x's dtype and use the dense GEMM.
"""

from __future__ import annotations

import torch

from ember.kernels.linear.base import LINEAR_METHODS, WeightOnlyLinear, fp32_linear

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
    if n % BLOCK_N:
        raise ValueError(f"int4 needs the output size ({n}) to be a multiple of {BLOCK_N}")
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


def dequantize_int4(params: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    sz = params["scale_zero"].float()  # [K/group, N, 2]
    groups, n = sz.shape[0], sz.shape[1]
    k = groups * GROUP
    q = unpack_int4(params["qweight"], n, k).float().view(n, groups, GROUP)
    scale, zero = sz[..., 0].t()[..., None], sz[..., 1].t()[..., None]
    return ((q - 8) * scale + zero).view(n, k).to(dtype)


def reference_apply(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain torch: dequantize, then F.linear in fp32 on the kernel-dtype-rounded activations."""
    return fp32_linear(x.to(KERNEL_DTYPE), dequantize_int4(params), params, x.dtype)


@LINEAR_METHODS.register("int4")
class Int4Linear(WeightOnlyLinear):
    name = "int4"
    # The tied output head keeps 8 bits: it is a Q8_0 tensor in the GGUF, and 4 bits there cost
    # more perplexity than all 30 layers' projections together (benchmarks/README.md).
    head_method = "int8"

    def pack(self, weight, bias, dtype):
        q, scale, zero = quantize_int4(weight)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        params = {"qweight": packed, "scale_zero": torch.stack([scale.t(), zero.t()], dim=-1).contiguous()}
        return self.add_bias(params, bias, dtype)

    def dequantize(self, params, dtype):
        return dequantize_int4(params, dtype)

    def small_batch(self, x2, params):
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(KERNEL_DTYPE), params["qweight"], GROUP,
                                                          params["scale_zero"])
