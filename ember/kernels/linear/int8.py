"""`int8`: weight-only int8, one symmetric scale per output channel.

The weight is stored as int8 [out, in] plus a scale per row (4x less memory than fp32), and
multiplied by `aten._weight_int8pack_mm`, which streams the int8 rows and accumulates in
fp32. That kernel's fast path wants bf16 activations and scales (its fp32 path is a slow
fallback, ~20x slower in torch 2.13), so small batches (decode) cast x to bf16 and the result
back to x's dtype. Large batches (prefill) are arithmetic-bound, not memory-bound: they
dequantize the weight to x's dtype and use the dense GEMM, which is both faster and more exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kernels.linear.base import LINEAR_METHODS, LinearMethod

KERNEL_DTYPE = torch.bfloat16


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: w ~= q * scale, q in [-127, 127]. The scale is rounded to the
    kernel dtype first so the codes are chosen against the scale the kernel will really use."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-8).to(KERNEL_DTYPE)
    q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def dequantize_int8(params: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (params["qweight"].float() * params["scale"].float()[:, None]).to(dtype)


def reference_apply(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain torch: dequantize, then F.linear in fp32 on the kernel-dtype-rounded activations."""
    y = F.linear(x.to(KERNEL_DTYPE).float(), dequantize_int8(params))
    if "bias" in params:
        y = y + params["bias"].float()
    return y.to(x.dtype)


@LINEAR_METHODS.register("int8")
class Int8Linear(LinearMethod):
    name = "int8"
    # The tied output head (49152 x 576 for the default model) is the largest matrix; int8 keeps
    # its perplexity cost small (see benchmarks/README.md) and reads 4x fewer bytes per token.
    head_method = "int8"
    # Rows at or above which the product is arithmetic-bound and dequantize + dense GEMM wins.
    dense_rows = 64

    def pack(self, weight, bias, dtype):
        q, scale = quantize_int8(weight)
        params = {"qweight": q, "scale": scale}
        if bias is not None:
            params["bias"] = bias.to(dtype)
        return params

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k)
        if x2.shape[0] >= self.dense_rows:
            y = F.linear(x2, dequantize_int8(params, x.dtype))
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2.to(KERNEL_DTYPE), params["qweight"], params["scale"])
            y = y.to(x.dtype)
        if "bias" in params:
            y = y + params["bias"]
        return y.view(*lead, y.shape[-1])
