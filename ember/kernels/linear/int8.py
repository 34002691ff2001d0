"""`int8`: weight-only int8, one symmetric scale per output channel.

The weight is stored as int8 codes plus a scale per row (4x less memory than fp32): for the C
kernels, in `panels` of 16 rows [out/16, in, 16] (csrc/linear_int8_panels.h: 16 rows' codes
per 16-byte load, each widened weight reused by 6 activation rows); without them, or when
out is not a multiple of 16, as `qweight` [out, in]. Small batches (decode, memory-bound, and
batched decode up to 63 rows) run the C kernels: int8 weights widened in registers, fp32
activations and accumulation; ~2x faster than torch's kernel on AVX2 and as exact as
dequantize + F.linear (only the order of the fp32 sums differs).
Under an AVX-512 variant of the C kernels (`native.wide_vectors`) prefill runs them too: their
16-wide tile outruns dequantize + GEMM there (`kernel_takes_large_batches`).
Without a C compiler or AVX2 they fall back to `aten._weight_int8pack_mm`, whose fast path wants bf16 activations
and scales (its fp32 path is a slow fallback, ~20x slower in torch 2.13): x is cast to bf16
and the result back. Large batches (prefill) are arithmetic-bound: they dequantize the weight
to x's dtype and use the dense GEMM, which is both faster and more exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kernels import native
from ember.kernels.linear.base import LINEAR_METHODS, WeightOnlyLinear, fp32_linear

KERNEL_DTYPE = torch.bfloat16


def quantize_int8(weight: torch.Tensor, chunk_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: w ~= q * scale, q in [-127, 127]. The scale is rounded to the
    kernel dtype first so the codes are chosen against the scale the kernel will really use.
    Rows go in chunks, so the fp32 temporaries of a large matrix (the 49152-row output head)
    never add hundreds of MB to the load-time peak."""
    n = weight.shape[0]
    q = torch.empty(weight.shape, dtype=torch.int8)
    scale = torch.empty(n, dtype=KERNEL_DTYPE)
    for start in range(0, n, chunk_rows):
        w = weight[start:start + chunk_rows].float()
        s = (w.abs().amax(dim=1) / 127).clamp(min=1e-8).to(KERNEL_DTYPE)
        q[start:start + chunk_rows] = torch.round(w / s.float()[:, None]).clamp(-127, 127)
        scale[start:start + chunk_rows] = s
    return q, scale


PANEL = 16  # rows per panel (csrc/linear_int8_panels.h)


def to_panels(q: torch.Tensor) -> torch.Tensor:
    n, k = q.shape
    return q.view(n // PANEL, PANEL, k).transpose(1, 2).contiguous()


def codes(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """int8 codes [out, in] from either storage."""
    if "panels" in params:
        p = params["panels"]
        return p.transpose(1, 2).reshape(p.shape[0] * PANEL, p.shape[1])
    return params["qweight"]


def dequantize_int8(params: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (codes(params).float() * params["scale"].float()[:, None]).to(dtype)


def reference_apply(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain torch for the aten path: dequantize, then F.linear in fp32 on bf16-rounded activations."""
    return fp32_linear(x.to(KERNEL_DTYPE), dequantize_int8(params), params, x.dtype)


def native_reference_apply(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain torch for the C kernel: dequantize, then F.linear in fp32."""
    return fp32_linear(x, dequantize_int8(params), params, x.dtype)


@LINEAR_METHODS.register("int8")
class Int8Linear(WeightOnlyLinear):
    name = "int8"
    # The tied output head (49152 x 576 for the default model) is the largest matrix; int8 keeps
    # its perplexity cost small (see benchmarks/README.md) and reads 4x fewer bytes per token.
    head_method = "int8"

    def __init__(self, use_native: bool | None = None):
        super().__init__()
        self.use_native = native.available() if use_native is None else use_native

    def pack(self, weight, bias, dtype):
        q, scale = quantize_int8(weight)
        stored = {"panels": to_panels(q)} if self.use_native and q.shape[0] % PANEL == 0 else {"qweight": q}
        return self.add_bias({**stored, "scale": scale, "scale_f32": scale.float()}, bias, dtype)

    def dequantize(self, params, dtype):
        return dequantize_int8(params, dtype)

    def packed_bytes(self, out_features, in_features, dtype):
        return out_features * in_features + out_features * (2 + 4)  # codes, bf16 and fp32 scales

    def native_weight(self, params, with_bias=True):
        bias = params.get("bias") if with_bias else None
        if "panels" in params:
            p = params["panels"]
            return native.weight("int8_panels", p, p.shape[0] * PANEL, p.shape[1], scale=params["scale_f32"], bias=bias)
        q = params["qweight"]
        return native.weight("int8", q, q.shape[0], q.shape[1], scale=params["scale_f32"], bias=bias)

    def kernel_takes_large_batches(self, params):
        # Under AVX-512 the 16-wide panel tile (16 activation rows per widened weight) beats
        # dequantize + torch's fp32 GEMM at prefill sizes; under AVX2 the dequantize-and-GEMM
        # route stays (benchmarks/README.md, "AVX-512 variants"). The same fp32 products either way.
        return "panels" in params and native.wide_vectors()

    def fallback(self, x2, params):
        if "panels" in params:  # packed for a C kernel that is not here after all
            return F.linear(x2, dequantize_int8(params, x2.dtype))
        return self.apply_aten(x2, params)

    @staticmethod
    def apply_aten(x2: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x2.to(KERNEL_DTYPE), params["qweight"], params["scale"])
