"""Small binary floating-point formats: fp8 (e4m3, e5m2), fp6 (e2m3, e3m2), fp4 (e2m1).

A code is sign | exponent field | mantissa field. With bias b and m mantissa
bits, a code with exponent field E > 0 is (1 + M/2^m) * 2^(E-b) and E == 0 is a
subnormal M/2^m * 2^(1-b). Every format here has subnormals and both signed
zeros. They differ only in what the top of the code range means:

============  ====  =====================================  ==========================
format        bias  top codes                              overflow (non-saturating)
============  ====  =====================================  ==========================
fp8_e4m3      7     S.1111.111 = NaN (OCP "fn": no inf)    NaN
fp8_e5m2      15    S.11111.00 = inf, S.11111.xx = NaN     inf (IEEE 754 style)
fp6_e2m3      1     all finite (OCP MX: no inf/NaN)        always saturates
fp6_e3m2      3     all finite                             always saturates
fp4_e2m1      1     all finite                             always saturates
============  ====  =====================================  ==========================

Encoding rounds to nearest, ties to even, in one step from the exact input
value. A result beyond the largest finite value overflows: to inf (e5m2), to NaN
(e4m3), or, with ``saturate=True`` and always for the fp6/fp4 formats, to the
largest finite value. "Beyond" follows IEEE round-to-nearest: a value overflows
only if it would round to the next (unrepresentable) step above the largest
finite value, so e4m3 maps 464 (halfway from 448 to 480) to 448, ties-to-even.
Infinite inputs map to inf/NaN per the same rule, or to +-max when saturating.
NaN inputs give the format's NaN (0x7F/0xFF for e4m3, 0x7E/0xFE for e5m2, the
quiet NaN ml_dtypes produces); the fp6/fp4 formats have no NaN, so encoding a
NaN raises ``ValueError`` instead of inventing a number.

Codes are returned as ``torch.uint8`` holding the bit pattern in the low bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ._bits import floor_log2, pow2


@dataclass(frozen=True)
class MiniFloat:
    """One small float format; see the module docstring for the semantics."""

    name: str
    exp_bits: int
    man_bits: int
    bias: int
    # "ieee": top exponent is inf/NaN; "fn": only the all-ones magnitude is NaN;
    # "none": every code is finite.
    specials: str
    saturate: bool = False

    def __post_init__(self) -> None:
        if self.specials not in ("ieee", "fn", "none"):
            raise ValueError(f"unknown specials kind {self.specials!r}")
        if self.specials == "none" and not self.saturate:
            raise ValueError(f"{self.name} has no inf/NaN: it can only saturate")
        if self.bits > 8:
            raise ValueError("MiniFloat codes are stored as uint8 (at most 8 bits)")

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.uint8

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal value (also the subnormals' scale)."""
        return 1 - self.bias

    @property
    def _mag_mask(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def max_mag_code(self) -> int:
        """Magnitude bits of the largest finite value."""
        if self.specials == "ieee":
            return (((1 << self.exp_bits) - 2) << self.man_bits) | ((1 << self.man_bits) - 1)
        if self.specials == "fn":
            return self._mag_mask - 1
        return self._mag_mask

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value (the OCP MX spec's emax_elem)."""
        return (self.max_mag_code >> self.man_bits) - self.bias

    @property
    def max_value(self) -> float:
        return float(self.decode(torch.tensor([self.max_mag_code], dtype=torch.uint8))[0])

    @property
    def nan_mag_code(self) -> int | None:
        if self.specials == "ieee":
            # Quiet NaN with the top mantissa bit set, as ml_dtypes produces.
            return (((1 << self.exp_bits) - 1) << self.man_bits) | (1 << (self.man_bits - 1))
        if self.specials == "fn":
            return self._mag_mask
        return None

    @property
    def inf_mag_code(self) -> int | None:
        if self.specials == "ieee":
            return ((1 << self.exp_bits) - 1) << self.man_bits
        return None

    @cached_property
    def _table(self) -> torch.Tensor:
        """Value of every code, float32, indexed by the code (decode is a gather)."""
        codes = torch.arange(1 << self.bits, dtype=torch.int64)
        mag = codes & self._mag_mask
        e_field = mag >> self.man_bits
        mant = mag & ((1 << self.man_bits) - 1)
        # Normal: (2^m + M) * 2^(E - b - m); subnormal (E == 0): M * 2^(1 - b - m).
        significand = (mant + (e_field > 0).to(torch.int64) * (1 << self.man_bits)).to(torch.float64)
        value = significand * pow2(torch.clamp(e_field, min=1) - self.bias - self.man_bits)
        value = torch.where(codes >> (self.bits - 1) == 1, -value, value)
        if self.specials == "ieee":
            top = e_field == (1 << self.exp_bits) - 1
            value = torch.where(top & (mant == 0), torch.copysign(torch.tensor(float("inf"), dtype=torch.float64), value), value)
            value = torch.where(top & (mant != 0), torch.tensor(float("nan"), dtype=torch.float64), value)
        elif self.specials == "fn":
            value = torch.where(mag == self._mag_mask, torch.tensor(float("nan"), dtype=torch.float64), value)
        return value.to(torch.float32)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (any integer dtype, bit pattern in the low ``bits``) -> float32."""
        return self._table[codes.to(torch.int64) & ((1 << self.bits) - 1)]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Float tensor -> uint8 codes, round to nearest even (module docstring)."""
        x64 = x.detach().to(torch.float64)
        nan = torch.isnan(x64)
        if self.nan_mag_code is None and bool(nan.any()):
            raise ValueError(f"{self.name} has no NaN encoding; input contains NaN")
        sign = torch.signbit(x64).to(torch.int64)
        a = x64.abs()
        inf = torch.isinf(a)
        a = torch.where(nan | inf, torch.zeros_like(a), a)

        m = self.man_bits
        # Quantum of a's binade, never finer than the subnormal quantum. The cap
        # at emax + 2 only keeps the arithmetic bounded: anything that large
        # overflows whatever the cap.
        e = floor_log2(a).clamp(min=self.emin, max=self.emax + 2)
        n = torch.round(a * pow2(m - e))  # exact scaling; torch.round ties to even
        n = n.clamp(max=float(1 << (m + 2))).to(torch.int64)
        # (e - emin) * 2^m + n is the magnitude code in every case: subnormals
        # (e == emin, n < 2^m), normals (n in [2^m, 2^(m+1))), and a rounding
        # carry (n == 2^(m+1)) which lands on the next binade's first code.
        mag = (e - self.emin) * (1 << m) + n

        over = (mag > self.max_mag_code) | inf
        if self.saturate:
            mag = torch.where(over, self.max_mag_code, mag)
        elif self.specials == "ieee":
            mag = torch.where(over, self.inf_mag_code, mag)
        else:  # "fn": no infinity, overflow is NaN
            mag = torch.where(over, self.nan_mag_code, mag)
        if self.nan_mag_code is not None:
            mag = torch.where(nan, self.nan_mag_code, mag)
        return ((sign << (self.bits - 1)) | mag).to(torch.uint8)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)): x rounded to the nearest value of this format."""
        return self.decode(self.encode(x))


def fp8_e4m3(saturate: bool = False) -> MiniFloat:
    return MiniFloat("fp8_e4m3", 4, 3, 7, "fn", saturate)


def fp8_e5m2(saturate: bool = False) -> MiniFloat:
    return MiniFloat("fp8_e5m2", 5, 2, 15, "ieee", saturate)


def fp6_e2m3() -> MiniFloat:
    return MiniFloat("fp6_e2m3", 2, 3, 1, "none", True)


def fp6_e3m2() -> MiniFloat:
    return MiniFloat("fp6_e3m2", 3, 2, 3, "none", True)


def fp4_e2m1() -> MiniFloat:
    return MiniFloat("fp4_e2m1", 2, 1, 1, "none", True)
