"""`dense`: the weight kept as a float matrix in the model dtype; the exact reference path.

An fp32 matrix runs on torch's GEMM (the fused step reads it for decode). A bf16 matrix on a
CPU without native bf16 arithmetic (no AVX512-BF16 or AMX, `native.cpu_has_bf16_gemm`) runs
on the C kernels at every batch size, the bf16 widened to fp32 in registers: exact products,
fp32 sums, and 4-5x torch's bf16 GEMM there. Elsewhere torch's oneDNN bf16 GEMM."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kernels import native
from ember.kernels.linear.base import LINEAR_METHODS, LinearMethod


@LINEAR_METHODS.register("dense")
class DenseLinear(LinearMethod):
    name = "dense"

    def __init__(self):
        self._bf16_weights: dict[tuple[int, int], native.Weight | None] = {}  # bias-free, by params
        self._f32_biases: dict[int, torch.Tensor] = {}  # the kernels add an fp32 bias

    def pack(self, weight, bias, dtype):
        params = {"weight": weight.to(dtype).contiguous()}
        if bias is not None:
            params["bias"] = bias.to(dtype)
        return params

    def packed_bytes(self, out_features, in_features, dtype):
        return out_features * in_features * torch.empty((), dtype=dtype).element_size()

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.kernel_takes_large_batches(params):
            key = (id(params), params["weight"].data_ptr())
            if key not in self._bf16_weights:
                self._bf16_weights[key] = self.native_weight(params, with_bias=False)
            w = self._bf16_weights[key]
            y = native.linear(x.reshape(-1, x.shape[-1]), w) if w is not None else None
            if y is not None:
                y = y.to(x.dtype).view(*x.shape[:-1], y.shape[-1])
                return y + params["bias"] if "bias" in params else y
        return F.linear(x, params["weight"], params.get("bias"))

    def native_weight(self, params, with_bias=True):
        w = params["weight"]
        kind = {torch.float32: "f32", torch.bfloat16: "bf16"}.get(w.dtype)
        if kind is None:
            return None
        bias = params.get("bias") if with_bias else None
        if bias is not None and bias.dtype != torch.float32:
            bias = self._f32_biases.setdefault(bias.data_ptr(), bias.float())
        return native.weight(kind, w, w.shape[0], w.shape[1], bias=bias)

    def kernel_takes_large_batches(self, params):
        return params["weight"].dtype == torch.bfloat16 and native.available() and not native.cpu_has_bf16_gemm()
