"""`ternary`: BitNet b1.58's absmean ternarization, run by T-MAC's lookup-table kernel.

Weights become {-1, 0, +1} times gamma, gamma = mean |w| (BitNet b1.58: W' = clamp(round(W /
gamma), -1, 1) gamma). BitNet takes one gamma per tensor; here it is one per group of 64 inputs
of each output row, the granularity the kernel has anyway: a model trained in float (the
default one) ternarized after training loses less so, and the kernel does the same work.
The trit t is stored as the 2-bit code t + 1 with scale gamma and minimum -gamma, so the
product runs on the tmac2 C kernel (csrc/linear_tmac.h): per 4 inputs one int8 table of
activation sums and, per weight plane, one byte lookup and one integer add, with no
multiply of a weight anywhere (the only multiplies: a scale and a minimum per group of 64,
and quantizing the tables). Why not a dedicated add/subtract kernel over fp32 activations:
it would do an add per weight (twice the lookup kernel's one lookup and add per 4 weights
and plane, with 2 planes), and the shuffles want 2-bit fields anyway; a base-3 packing
(1.6 bits, TQ1_0) would cut the bytes by a fifth but can't index a table directly.
The default model was not trained ternary: expect its perplexity to collapse
(benchmarks/README.md, "Low-bit linear methods"); the kernel's speed is the point.
"""

from __future__ import annotations

import torch

from ember.kernels.linear.base import LINEAR_METHODS
from ember.kernels.linear.tmac import LutLinear
from ember.kernels.linear.tmac_ref import GROUP, SCALE_DTYPE


def ternarize(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Absmean per group: codes int32 [N, K] in {0, 1, 2} (trit + 1), fp16 scale gamma and
    minimum -gamma [N, K/group], w ~= code * gamma - gamma. The trits are chosen against the
    fp16 gamma the kernel will use; a group that is already ternary is kept exactly."""
    n, k = weight.shape
    if k % group:
        raise ValueError(f"ternary needs the input size ({k}) to be a multiple of {group}")
    w = weight.float().view(n, k // group, group)
    gamma = w.abs().mean(-1).clamp(min=1e-5).to(SCALE_DTYPE)
    # A group already ternary (one magnitude, as GGUF TQ1_0/TQ2_0 store: trits times an fp16 d)
    # keeps that magnitude as its scale, so the file's weights come back bit for bit.
    top = w.abs().amax(-1)
    ternary = ((w.abs() == top[..., None]) | (w == 0)).all(-1) & (top > 0) & (top.to(SCALE_DTYPE).float() == top)
    gamma = torch.where(ternary, top.to(SCALE_DTYPE), gamma)
    trit = torch.round(w / gamma.float()[..., None]).clamp(-1, 1)
    return (trit + 1).to(torch.int32).view(n, k), gamma, -gamma


@LINEAR_METHODS.register("ternary")
class TernaryLinear(LutLinear):
    name = "ternary"
    bits = 2  # a trit in a 2-bit code: the tmac2 kernel

    def quantize(self, weight):
        return ternarize(weight)
