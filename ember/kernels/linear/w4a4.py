"""`w4a4`: 4-bit weights and 4-bit activations with outlier blocks kept at 8 bits (COMET).

COMET (W4A4 with mixed-precision activations): activation channels in blocks, the few blocks
that hold outliers kept at int8 (under 20%), the rest int4; integer products throughout. Here:
- weights: `int4`'s, unchanged (Q4_1's grid, blocks of 8 rows; a GGUF's Q4_0/Q4_1 blocks are
  moved as they are), so w4a4 differs from int4 only in its activations;
- activations: per row, per group of 32 inputs (the weights' group, so a block of channels
  lines up with the weight scales), symmetric with d = max|x| / qmax and q = round(x / d):
  qmax = 7 (4 bits, -7..7) except for the ceil(G / 8) groups of the row with the largest
  max|x| (COMET's outlier blocks, 1/8 of the channels), which keep qmax = 127 (Q8_0). COMET
  finds its outlier channels by calibration and permutes them into blocks (the same
  permutation applied to the weights); here the blocks are chosen per token from the token
  itself (no calibration, no permutation: the weights stay as stored);
- the integer dot is int4's kernel (csrc/linear_int4.h, kind `w4a4`): the 4-bit codes sit in
  int8 lanes of vpdpbusd / vpmaddubsw. x86 has no 4 x 4-bit dot product, so the speed is
  int4's (measured: benchmarks/README.md); what this method buys is what 4-bit activations
  cost in accuracy and what a 4-bit multiplier would save in energy (`ember info --energy`).
Reference: `reference_apply` (dequantize the weight, `quantize_a4` the activations, F.linear in
fp32); groups are chosen by integer counts and codes by the kernel's own fp32 operations, so
the two agree up to the order of fp32 sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kernels import native
from ember.kernels.linear.base import LINEAR_METHODS, fp32_linear
from ember.kernels.linear.int4 import GROUP, ROWS, Int4Linear, dequantize_int4, pack_blocks, quantize_int4

KEEP_8BIT = 8  # one group in KEEP_8BIT (rounded up) of each row keeps 8 bits (csrc A4_KEEP_8BIT)


def quantize_a4(x: torch.Tensor) -> torch.Tensor:
    """x [M, K] -> the dequantized mixed 4/8-bit activations the kernel multiplies, computed with
    its fp32 operations: per group of 32, d = amax / qmax, q = round(x * (qmax / amax)); qmax 127
    for the groups fewer than ceil(G / 8) of whose row-mates have a strictly larger amax, else 7."""
    m, k = x.shape
    groups = k // GROUP
    g = x.float().reshape(m, groups, GROUP)
    amax = g.abs().amax(-1)  # [M, G]
    above = (amax[:, None, :] > amax[:, :, None]).sum(-1)  # [M, G]: row-mates with a larger max
    keep = -(-groups // KEEP_8BIT)
    qmax = torch.where(above < keep, 127.0, 7.0)
    # true divisions, as C's qmax / amax (torch's scalar / tensor would be reciprocal * scalar)
    inv = torch.where(amax > 0, qmax / amax, torch.zeros_like(amax))
    d = amax / qmax
    return (torch.round(g * inv[..., None]) * d[..., None]).reshape(m, k)


def eight_bit_share(x: torch.Tensor) -> float:
    """The share of x's groups that keep 8 bits (1/8 rounded up per row, more on ties)."""
    m, k = x.shape
    amax = x.float().reshape(m, k // GROUP, GROUP).abs().amax(-1)
    above = (amax[:, None, :] > amax[:, :, None]).sum(-1)
    return float((above < -(-(k // GROUP) // KEEP_8BIT)).float().mean())


def reference_apply(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain torch: dequantize the weight, quantize the activations as the kernel does, F.linear in fp32."""
    x2 = quantize_a4(x.reshape(-1, x.shape[-1]))
    return fp32_linear(x2, dequantize_int4(params), params, x.dtype).view(*x.shape[:-1], -1)


@LINEAR_METHODS.register("w4a4")
class W4A4Linear(Int4Linear):
    name = "w4a4"
    head_method = "int8"  # as int4: the output head keeps int8 weights and fp32 activations

    def pack(self, weight, bias, dtype):
        # always int4's blocks (they need no C kernel to be read: the fallback is the reference)
        if weight.shape[0] % ROWS:
            raise ValueError(f"w4a4 needs the output size ({weight.shape[0]}) to be a multiple of {ROWS}")
        codes, sm = pack_blocks(*quantize_int4(weight))
        return self.add_bias({"block_codes": codes, "block_scale_min": sm}, bias, dtype)

    def takes_blocks(self, rows: int) -> bool:
        return rows % ROWS == 0

    def energy_model(self):
        # 4 x 4-bit products, one group in 8 at 8 x 8 bits; int32 sums; the head stays int8
        return {"weight_dtype": "int4-w4a4", "head_weight_bits": 8}

    def native_weight(self, params, with_bias=True):
        if not self.use_native:
            return None
        c = params["block_codes"]
        return native.weight("w4a4", c, c.shape[0] * ROWS, c.shape[1] * GROUP, sm=params["block_scale_min"],
                             bias=params.get("bias") if with_bias else None)

    def kernel_takes_large_batches(self, params):
        # Every batch size goes through the kernel or, without it, the reference: the dense
        # route for large batches would multiply unquantized activations (not this method).
        return True

    def fallback(self, x2, params):
        return F.linear(quantize_a4(x2.float()), dequantize_int4(params)).to(x2.dtype)
