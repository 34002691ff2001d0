"""k-bit integers with a float scale and an integer zero point per group.

Value = (q - z) * scale, q in [qmin, qmax]:
  signed   k bits: [-2^(k-1), 2^(k-1) - 1]
  unsigned k bits: [0, 2^k - 1]
Groups are ``group_size`` consecutive elements along the last dim (a ragged
last group is zero padded; padding cannot change a group's range).

Parameter choice per group:
  symmetric (signed only): z = 0, scale = amax / (2^(k-1) - 1); codes then use
      the symmetric range [-(2^(k-1) - 1), 2^(k-1) - 1] so -x is exact.
  asymmetric: the range [min(lo, 0), max(hi, 0)] (widened to include 0, so zero
      is exactly representable, which padding and ReLU-like data need) maps
      onto [qmin, qmax]: scale = (hi - lo) / (qmax - qmin),
      z = qmin - round(lo / scale) clamped to [qmin, qmax].
An all-zero group gets scale 1 and codes equal to z. Scales are float32 and
at least 2^-126 (float32's smallest normal), so a group whose range is below
~2^-126 * (qmax - qmin) is quantized with that coarser step.

Encoding q = clamp(round(x / scale) + z, qmin, qmax) rounds to nearest, ties to
even, exactly (no error from the division, see ``_round_div``), and saturates.
NaN/inf inputs raise ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._bits import from_blocks, to_blocks

FLOAT32_TINY = 2.0**-126  # smallest normal float32: the floor for stored scales


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    if not 2 <= bits <= 16:
        raise ValueError("int-k supported for 2 <= k <= 16")
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _code_dtype(bits: int, signed: bool) -> torch.dtype:
    if bits <= 8:
        return torch.int8 if signed else torch.uint8
    return torch.int16 if signed else torch.int32


@dataclass
class IntKTensor:
    codes: torch.Tensor  # [..., n_groups, group_size]
    scales: torch.Tensor  # [..., n_groups] float32
    zero_points: torch.Tensor  # [..., n_groups] int32
    bits: int
    signed: bool
    length: int

    def decode(self) -> torch.Tensor:
        return int_decode(self)


def _round_div(x: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """round_half_even(x / scale) clamped to [lo, hi], exactly, in float64.

    x / scale itself is rounded, so a quotient within an ulp of a half-integer
    could round the wrong way. Instead take n = floor(x / scale), correct it by
    one step if the division rounded across an integer, and compare x with the
    midpoint (n + 1/2) * scale. With scale a float32 (24 bits) and |n| < 2^20,
    all those products are exact in float64, so every comparison is exact.
    """
    n = torch.floor(x / scale).clamp(lo - 1, hi + 1)
    n = torch.where(n * scale > x, n - 1, n)
    n = torch.where((n + 1) * scale <= x, n + 1, n)
    mid = (n + 0.5) * scale
    odd = torch.remainder(n, 2) == 1
    up = (x > mid) | ((x == mid) & odd)
    return (n + up.to(n.dtype)).clamp(lo, hi)


def int_encode_with(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, signed: bool
) -> torch.Tensor:
    """Encode with given scale and zero point (broadcast against x); int64 codes.

    The scale is rounded to float32 first (the type scales are stored in),
    which is what makes the rounding exact (see ``_round_div``)."""
    qmin, qmax = code_range(bits, signed)
    x64 = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x64).all()):
        raise ValueError("int-k cannot encode NaN or infinity")
    scale64 = scale.to(torch.float32).to(torch.float64)
    zp = zero_point.to(torch.float64)
    q = _round_div(x64, scale64, qmin - zp, qmax - zp) + zp
    return q.to(torch.int64)


def int_encode(
    x: torch.Tensor, bits: int = 8, group_size: int = 64, signed: bool = True, symmetric: bool = True
) -> IntKTensor:
    """Per-group quantization of x's last dim (module docstring)."""
    if symmetric and not signed:
        raise ValueError("symmetric int-k is defined for signed codes only")
    qmin, qmax = code_range(bits, signed)
    groups, length = to_blocks(x.detach().to(torch.float64), group_size)
    if not bool(torch.isfinite(groups).all()):
        raise ValueError("int-k cannot encode NaN or infinity")
    if symmetric:
        qmin = -qmax
        scale = groups.abs().amax(dim=-1) / qmax
        zp = torch.zeros_like(scale, dtype=torch.int64)
    else:
        lo = groups.amin(dim=-1).clamp(max=0.0)
        hi = groups.amax(dim=-1).clamp(min=0.0)
        scale = (hi - lo) / (qmax - qmin)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = (qmin - torch.round(lo / safe)).clamp(qmin, qmax).to(torch.int64)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    # Keep the stored float32 scale normal: a group spanning less than ~2^-126
    # would otherwise get a scale that underflows to zero (or loses bits).
    scale = scale.clamp(min=FLOAT32_TINY).to(torch.float32)
    # Encode against the float32 scale actually stored, so decode matches.
    q = int_encode_with(groups, scale[..., None], zp[..., None], bits, signed).clamp(qmin, qmax)
    return IntKTensor(q.to(_code_dtype(bits, signed)), scale, zp.to(torch.int32), bits, signed, length)


def int_decode(t: IntKTensor) -> torch.Tensor:
    vals = (t.codes.to(torch.float64) - t.zero_points.to(torch.float64)[..., None]) * t.scales.to(torch.float64)[..., None]
    return from_blocks(vals.to(torch.float32), t.length)


def int_quantize(x: torch.Tensor, **kw) -> torch.Tensor:
    return int_decode(int_encode(x, **kw)).reshape(x.shape)
