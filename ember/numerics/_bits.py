"""Exact helpers shared by the format encoders: powers of two, exponents, blocks.

Every encoder in this package works in float64 internally. Any float32, bf16 or
fp16 input converts to float64 exactly, and scaling a float64 by a power of two
in [-1022, 1023] is exact, so the only rounding an encoder performs is the one
its format defines (no double rounding through an intermediate type).
"""

from __future__ import annotations

import torch


# floor_log2(0): one below the smallest float64 subnormal's exponent (-1074).
ZERO_LOG2 = -1075


def pow2(e: torch.Tensor | int) -> torch.Tensor:
    """2.0**e as float64, built from the bit pattern so it is exact.

    ``e`` must lie in [-1022, 1023] (normal float64 range); callers clamp first.
    Built from bits rather than with ``torch.exp2`` because libm's exp2 is not
    guaranteed to be exact even at integers.
    """
    e = torch.as_tensor(e, dtype=torch.int64)
    if e.numel() and (int(e.min()) < -1022 or int(e.max()) > 1023):
        raise ValueError("pow2 exponent outside the normal float64 range")
    return ((e + 1023) << 52).view(torch.float64)


def floor_log2(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) as int64 for finite a >= 0 (float64).

    ``torch.frexp`` returns a = m * 2**e with m in [0.5, 1), so floor(log2 a) is
    e - 1, exactly, including for float64 subnormals. Zero gives ZERO_LOG2,
    below every float64, so that clamping to a format's minimum exponent puts
    zero in the subnormal binade, where it encodes as the zero code.
    """
    _, e = torch.frexp(a)
    return torch.where(a > 0, e.to(torch.int64) - 1, torch.full_like(e, ZERO_LOG2, dtype=torch.int64))


def to_blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """Reshape the last dim of x into [..., n_blocks, block], zero-padding the tail.

    Returns the blocked tensor and the original length of the last dim, which
    ``from_blocks`` needs to drop the padding again. Zero padding never changes
    a block's absolute maximum, so it never changes a shared scale.
    """
    if block < 1:
        raise ValueError("block size must be positive")
    if x.dim() == 0:
        x = x.reshape(1)
    n = x.shape[-1]
    pad = (-n) % block
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], (n + pad) // block, block), n


def from_blocks(x: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of ``to_blocks``: flatten the last two dims and drop the padding."""
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])[..., :length]
