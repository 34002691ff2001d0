"""The LinearMethod seam: `pack` a float weight once at load, `apply` it to activations each step."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from ember.registry import Registry


class LinearMethod(ABC):
    name: str = ""
    # The method the output head should use beside this one (a quantized body names a head
    # precision that keeps accuracy); None: whatever the model's caller asked for.
    head_method: str | None = None

    @abstractmethod
    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Turn a float weight [out, in] into whatever tensors `apply` needs."""

    @abstractmethod
    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """y = x @ W^T (+ b) for x [..., in]."""

    def weight_bytes(self, params: dict[str, torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in params.values())


def fp32_linear(x: torch.Tensor, weight: torch.Tensor, params: dict[str, torch.Tensor],
                out_dtype: torch.dtype) -> torch.Tensor:
    """F.linear in fp32 with the method's bias, cast to out_dtype: what the references share."""
    y = F.linear(x.float(), weight.float())
    if "bias" in params:
        y = y + params["bias"].float()
    return y.to(out_dtype)


LINEAR_METHODS: Registry[LinearMethod] = Registry("linear method")
