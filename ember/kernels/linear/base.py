"""The LinearMethod seam: `pack` a float weight once at load, `apply` it to activations each step."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from ember.kernels import native
from ember.kernels.linear.ggml_blocks import GGMLBlocks
from ember.registry import Registry


class LinearMethod(ABC):
    name: str = ""
    # The method the output head should use beside this one (a quantized body names a head
    # precision that keeps accuracy); None: whatever the model's caller asked for.
    head_method: str | None = None

    @abstractmethod
    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Turn a float weight [out, in] into whatever tensors `apply` needs."""

    def pack_quantized(self, weight: GGMLBlocks, bias: torch.Tensor | None, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """`pack` for a weight still in a GGUF's quantized blocks. A method whose layout matches
        the blocks' repacks them without going through float; the default dequantizes."""
        return self.pack(weight.dequantize(), bias, dtype)

    def load(self, weight: torch.Tensor | GGMLBlocks, bias: torch.Tensor | None, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """`pack` or `pack_quantized`, whichever the weight's form calls for."""
        if isinstance(weight, GGMLBlocks):
            return self.pack_quantized(weight, bias, dtype)
        return self.pack(weight, bias, dtype)

    @abstractmethod
    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """y = x @ W^T (+ b) for x [..., in]."""

    def weight_bytes(self, params: dict[str, torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in params.values())

    def packed_bytes(self, out_features: int, in_features: int, dtype: torch.dtype) -> int | None:
        """What `pack` will store for an [out, in] weight without a bias (`ember info`, before
        loading); None if the method can't say."""
        return None

    def native_weight(self, params: dict[str, torch.Tensor], with_bias: bool = True) -> native.Weight | None:
        """The packed storage as the C kernels' `ember_weight` (csrc/linear.h), for the fused
        decoder; None if this method's storage has no C kernel."""
        return None

    def energy_model(self) -> dict | None:
        """Keyword arguments of numerics.energy.estimate_decode_energy that price this method's
        products (`ember info --energy`); None: priced as dense products in the model dtype."""
        return None

    def kernel_takes_large_batches(self, params: dict[str, torch.Tensor]) -> bool:
        """Whether the C kernel of `native_weight` beats torch's GEMM at prefill-sized batches
        too (the fused step then takes prefill chunks, models/llama_native.py)."""
        return False


class WeightOnlyLinear(LinearMethod):
    """Quantized weights with float activations (int8, int4): one skeleton for both.

    Small batches (decode) run the C kernel of csrc/linear.h on the packed weight, or the
    method's `fallback` where the kernels can't be built; at `dense_rows` rows and above the
    product is arithmetic-bound, so the weight is dequantized and the dense GEMM wins, unless
    `kernel_takes_large_batches` says the method's own kernel beats it there too.
    """

    dense_rows = 64

    def __init__(self):
        self._weights: dict[tuple[int, int], tuple] = {}  # bias-free structs (and what they point into), by params

    def small_batch(self, x2: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """x2 [rows, in] @ W^T without bias, in any float dtype."""
        first = next(iter(params.values()))
        key = (id(params), first.data_ptr())
        if key not in self._weights:
            # The entry holds the tensor, so neither the dict's id nor the tensor's memory can be
            # reused by another pack while it is cached (a stale struct would read freed memory).
            self._weights[key] = (self.native_weight(params, with_bias=False), first)
        w = self._weights[key][0]
        y = native.linear(x2, w) if w is not None else None
        return self.fallback(x2, params) if y is None else y

    @abstractmethod
    def fallback(self, x2: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """small_batch in torch alone (no C compiler or no AVX2)."""

    @abstractmethod
    def dequantize(self, params: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """The float weight [out, in] the packed tensors stand for."""

    @staticmethod
    def add_bias(params: dict[str, torch.Tensor], bias: torch.Tensor | None, dtype: torch.dtype) -> dict:
        if bias is not None:
            params["bias"] = bias.to(dtype)
        return params

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k)
        if x2.shape[0] >= self.dense_rows and not self.kernel_takes_large_batches(params):
            y = F.linear(x2, self.dequantize(params, x.dtype))
        else:
            y = self.small_batch(x2, params).to(x.dtype)
        if "bias" in params:
            y = y + params["bias"]
        return y.view(*lead, y.shape[-1])


def fp32_linear(x: torch.Tensor, weight: torch.Tensor, params: dict[str, torch.Tensor],
                out_dtype: torch.dtype) -> torch.Tensor:
    """F.linear in fp32 with the method's bias, cast to out_dtype: what the references share."""
    y = F.linear(x.float(), weight.float())
    if "bias" in params:
        y = y + params["bias"].float()
    return y.to(out_dtype)


LINEAR_METHODS: Registry[LinearMethod] = Registry("linear method")
