"""`dense`: the weight kept as a float matrix in the model dtype; the exact reference path."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kernels.linear.base import LINEAR_METHODS, LinearMethod


@LINEAR_METHODS.register("dense")
class DenseLinear(LinearMethod):
    name = "dense"

    def pack(self, weight, bias, dtype):
        params = {"weight": weight.to(dtype).contiguous()}
        if bias is not None:
            params["bias"] = bias.to(dtype)
        return params

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.linear(x, params["weight"], params.get("bias"))
