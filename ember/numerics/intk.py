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
An all-zero group gets scale 1 and codes equal to z. Scales are float32.

Encoding q = clamp(round(x / scale) + z, qmin, qmax) rounds to nearest, ties to
even, and saturates; x / scale is evaluated in float64 so it is exact to far
more bits than any code needs. NaN/inf inputs raise ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._bits import from_blocks, to_blocks


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


def int_encode_with(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, signed: bool
) -> torch.Tensor:
    """Encode with given scale and zero point (broadcast against x); int64 codes."""
    qmin, qmax = code_range(bits, signed)
    x64 = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x64).all()):
        raise ValueError("int-k cannot encode NaN or infinity")
    q = torch.round(x64 / scale.to(torch.float64)) + zero_point.to(torch.float64)
    return q.clamp(qmin, qmax).to(torch.int64)


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
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.float32)
    # Encode against the float32 scale actually stored, so decode matches.
    q = int_encode_with(groups, scale[..., None], zp[..., None], bits, signed).clamp(qmin, qmax)
    return IntKTensor(q.to(_code_dtype(bits, signed)), scale, zp.to(torch.int32), bits, signed, length)


def int_decode(t: IntKTensor) -> torch.Tensor:
    vals = (t.codes.to(torch.float64) - t.zero_points.to(torch.float64)[..., None]) * t.scales.to(torch.float64)[..., None]
    return from_blocks(vals.to(torch.float32), t.length)


def int_quantize(x: torch.Tensor, **kw) -> torch.Tensor:
    return int_decode(int_encode(x, **kw)).reshape(x.shape)
