"""Int8 activations per group of 32 inputs (llama.cpp's Q8_0): what the batch-1-4 integer
kernels of csrc/linear_q8.h multiply, in plain torch, as their reference."""

from __future__ import annotations

import torch

GROUP = 32
MAX_ROWS = 4  # the integer kernels serve decode at batch 1-4; larger batches keep fp32 activations


def quantize_q8(x: torch.Tensor) -> torch.Tensor:
    """x [M, K] fp32 -> the dequantized int8 activations d * round(x / d), d = max|x| / 127 per
    group, computed with the same fp32 operations as the C kernel (q = round(x * (127 / max)))."""
    m, k = x.shape
    g = x.float().reshape(m, k // GROUP, GROUP)
    amax = g.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    return (torch.round(g * inv) * (amax / 127)).reshape(m, k)
