"""`dense`: the weight kept as a float matrix in the model dtype; the exact reference path."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kernels import native
from ember.kernels.linear.base import LINEAR_METHODS, LinearMethod


@LINEAR_METHODS.register("dense")
class DenseLinear(LinearMethod):
    name = "dense"

    def pack(self, weight, bias, dtype):
        params = {"weight": weight.to(dtype).contiguous()}
        if bias is not None:
            params["bias"] = bias.to(dtype)
        return params

    def packed_bytes(self, out_features, in_features, dtype):
        return out_features * in_features * torch.empty((), dtype=dtype).element_size()

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.linear(x, params["weight"], params.get("bias"))

    def native_weight(self, params, with_bias=True):
        w = params["weight"]
        if w.dtype != torch.float32:
            return None
        return native.weight(native.F32, w, w.shape[0], w.shape[1], bias=params.get("bias") if with_bias else None)
