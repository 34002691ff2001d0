"""Int8 activations per group of 32 inputs (llama.cpp's Q8_0): what the int4 C kernel
(csrc/linear_int4.h) multiplies, in plain torch, as its reference."""

from __future__ import annotations

import torch

GROUP = 32


def quantize_q8(x: torch.Tensor) -> torch.Tensor:
    """x [M, K] fp32 -> the dequantized int8 activations d * round(x / d), d = max|x| / 127 per
    group, computed with the same fp32 operations as the C kernel (q = round(x * (127 / max)))."""
    m, k = x.shape
    g = x.float().reshape(m, k // GROUP, GROUP)
    amax = g.abs().amax(-1, keepdim=True)
    # a true division, as the C kernel's 127.0f / amax: `127 / amax` on a tensor is computed as
    # reciprocal(amax) * 127, which differs in the last bit for a quarter of the values and
    # then flips a code that sits at a rounding boundary now and then
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    return (torch.round(g * inv) * (amax / 127)).reshape(m, k)
