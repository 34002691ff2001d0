"""`lmul`, `lmul4`: every product of a projection is an L-Mul (Luo & Sun, arXiv 2410.00907).

The weights are rounded once, at packing, to 8 exponent bits and m mantissa bits (m = 7 for
`lmul`: bfloat16 exactly; m = 4 for `lmul4`, the paper's "fp8 e4m3-like" width) and stored as
bf16 (2 bytes a weight, whatever m). Each call rounds the activations to m mantissa bits the
same way, and every product x*w is ember/numerics/lmul.py's mode "bits" (the paper's integer
addition of the operands' bit fields, with the 2^-l(m) offset; lmul.py's docstring has the
carry, zero, subnormal and overflow rules), summed in fp32.

The C kernel (csrc/linear_lmul.h, kinds lmul7 / lmul4) adds the bit fields with AVX2 integer
instructions at every batch size, so prefill runs on it and the fused step takes decode steps
and prefill chunks. The reference is lmul.py's lmul_matmul (the same products; its sums run in
another order). The output head keeps the same method: every product of the model is an
L-Mul, as the energy estimate (`ember info --energy`) prices it.
"""

from __future__ import annotations

import torch

from ember.kernels import native
from ember.kernels.linear.base import LINEAR_METHODS, WeightOnlyLinear
from ember.numerics.lmul import lmul_matmul, round_mantissa


def reference_apply(x: torch.Tensor, params: dict[str, torch.Tensor], mantissa_bits: int) -> torch.Tensor:
    """What the kernel computes, in plain torch: L-Mul products, fp32 sums, plus the bias."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    y = lmul_matmul(x2, params["lmul_weight"].float().t(), mantissa_bits)
    if "bias" in params:
        y = y + params["bias"].float()
    return y.to(x.dtype).view(*x.shape[:-1], -1)


class LMulLinear(WeightOnlyLinear):
    mantissa_bits = 7

    def pack(self, weight, bias, dtype):
        w = round_mantissa(weight.float(), self.mantissa_bits).to(torch.bfloat16).contiguous()  # exact: m <= 7
        params = {"lmul_weight": w}
        if bias is not None:
            params["bias"] = bias.float()  # the kernels add an fp32 bias
        return params

    def dequantize(self, params, dtype):
        return params["lmul_weight"].to(dtype)

    def packed_bytes(self, out_features, in_features, dtype):
        return out_features * in_features * 2

    def native_weight(self, params, with_bias=True):
        w = params["lmul_weight"]
        return native.weight(f"lmul{self.mantissa_bits}", w, w.shape[0], w.shape[1],
                             bias=params.get("bias") if with_bias else None)

    def kernel_takes_large_batches(self, params):
        # the reference costs up to 2^m matrix products per call: the kernel serves every size
        return native.available()

    def apply(self, x, params):
        if not native.available():
            return reference_apply(x, params, self.mantissa_bits)
        return super().apply(x, params)

    def fallback(self, x2, params):
        return reference_apply(x2, {"lmul_weight": params["lmul_weight"]}, self.mantissa_bits)

    def energy_model(self) -> dict:
        return {"linear": "lmul", "lmul_mantissa_bits": self.mantissa_bits, "weight_dtype": "bf16"}


@LINEAR_METHODS.register("lmul")
class LMul7(LMulLinear):
    name = head_method = "lmul"  # every product an L-Mul, the head's too
    mantissa_bits = 7


@LINEAR_METHODS.register("lmul4")
class LMul4(LMulLinear):
    name = head_method = "lmul4"
    mantissa_bits = 4
