"""Posits posit(n, es) (Gustafson; Posit Standard 2022 semantics for rounding).

A posit code is an n-bit two's complement integer. 0 is zero and 100...0 is
NaR ("not a real"); a negative posit is the two's complement of its absolute
value's code. The n-1 bits after the sign of a positive posit are

    regime | exponent (es bits) | fraction

where the regime is a run of r identical bits ended by the opposite bit (or by
the end of the word): a run of r ones means k = r - 1, a run of r zeros
k = -r. The value is 2^(k * 2^es + e) * (1 + f), with exponent bits cut off by
the end of the word read as zeros. There are no subnormals: the values step
geometrically from minpos = 2^(-(n-2) 2^es) to maxpos = 2^((n-2) 2^es).

Rounding (encode) is round-to-nearest-even *on the bit string*: the exact
value's infinite posit bit string is cut at n bits and rounded up when the
first dropped bit is 1 and any later bit, or the last kept bit, is 1. Where the
fraction is cut this is ordinary nearest-even in value; where exponent bits are
cut (near minpos/maxpos when es > 0) the midpoint lies geometrically between the
two neighbours, as the standard and SoftPosit define. Two exceptions: a nonzero
value never rounds to zero (|x| < minpos gives +-minpos) and a finite value never
overflows to NaR (|x| > maxpos gives +-maxpos). NaN and +-inf encode to NaR.

Codes are returned as int32 holding the unsigned n-bit pattern (0 .. 2^n - 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ._bits import pow2


@dataclass(frozen=True)
class Posit:
    n: int
    es: int

    def __post_init__(self) -> None:
        # 16 bits keeps the decode table small (2^16 entries) and every value
        # and (n+1)-bit midpoint exact in float64.
        if not (3 <= self.n <= 16 and 0 <= self.es <= 3):
            raise ValueError("posit(n, es) supported for 3 <= n <= 16, 0 <= es <= 3")

    @property
    def name(self) -> str:
        return f"posit{self.n}_{self.es}"

    @property
    def bits(self) -> int:
        return self.n

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.int32

    @property
    def nar_code(self) -> int:
        return 1 << (self.n - 1)

    @property
    def max_code(self) -> int:
        """Code of maxpos (the largest positive posit)."""
        return (1 << (self.n - 1)) - 1

    @property
    def max_value(self) -> float:
        return 2.0 ** ((self.n - 2) << self.es)

    @property
    def min_value(self) -> float:
        """minpos, the smallest positive posit."""
        return 2.0 ** (-((self.n - 2) << self.es))

    def decode_exact(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes -> float64, computed from the bit fields (exact for n <= 16)."""
        n, es = self.n, self.es
        c = codes.to(torch.int64) & ((1 << n) - 1)
        neg = (c >> (n - 1)) & 1
        p = torch.where(neg == 1, ((1 << n) - c) & ((1 << n) - 1), c)
        body = p & ((1 << (n - 1)) - 1)
        lead = (body >> (n - 2)) & 1
        # Length of the run of bits equal to the leading one, over n-1 bits. A
        # loop over bit positions (at most 15), each step vectorised over codes.
        run = torch.zeros_like(body)
        running = torch.ones_like(body, dtype=torch.bool)
        for j in range(n - 2, -1, -1):
            running &= ((body >> j) & 1) == lead
            run += running.to(torch.int64)
        k = torch.where(lead == 1, run - 1, -run)
        rest_len = torch.clamp(n - 2 - run, min=0)  # bits after the terminator
        rest = body & ((torch.ones_like(rest_len) << rest_len) - 1)
        exp_len = torch.clamp(rest_len, max=es)
        frac_len = rest_len - exp_len
        e = (rest >> frac_len) << (es - exp_len)  # cut exponent bits read as 0
        f = rest & ((torch.ones_like(frac_len) << frac_len) - 1)
        value = ((1 << frac_len) + f).to(torch.float64) * pow2(k * (1 << es) + e - frac_len)
        value = torch.where(neg == 1, -value, value)
        value = torch.where(c == 0, torch.zeros_like(value), value)
        return torch.where(c == self.nar_code, torch.full_like(value, float("nan")), value)

    @cached_property
    def _table(self) -> torch.Tensor:
        return self.decode_exact(torch.arange(1 << self.n)).to(torch.float32)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes -> float32 (NaR -> NaN). posit16_1 values need at most 13
        significant bits and exponents within +-28, so float32 is exact."""
        return self._table[codes.to(torch.int64) & ((1 << self.n) - 1)]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Float tensor -> int32 codes; bit-string round-to-nearest-even."""
        n, es = self.n, self.es
        x64 = x.detach().to(torch.float64)
        a = x64.abs()
        nar = ~torch.isfinite(a)
        zero = a == 0
        a = torch.where(nar | zero, torch.ones_like(a), a)

        mant, ex = torch.frexp(a)  # a = mant * 2^ex, mant in [0.5, 1)
        scale = ex.to(torch.int64) - 1  # a = 2^scale * (1 + fraction)
        # The 52 fraction bits of a (exact: float64 has a 53-bit significand).
        f52 = ((mant * 2.0 - 1.0) * 2.0**52).to(torch.int64)
        # Keep the top T fraction bits (enough for the n-1 kept bits and the
        # round bit whatever the regime length); the rest only feed "sticky".
        t = n + 1
        f_top = f52 >> (52 - t)
        f_sticky = (f52 & ((1 << (52 - t)) - 1)) != 0

        # Regime k and exponent e: scale = k * 2^es + e. Clamping k to +-(n-1)
        # keeps the bit string short; values that far out clamp to minpos/maxpos
        # below anyway.
        k = (scale >> es).clamp(-(n - 1), n - 1)
        e = scale & ((1 << es) - 1)
        one = torch.ones_like(k)
        # k >= 0: k+1 ones then a zero; k < 0: -k zeros then a one.
        regime_len = torch.where(k >= 0, k + 2, 1 - k)
        regime = torch.where(k >= 0, ((one << (k + 1)) - 1) << 1, one)
        body = (((regime << es) | e) << t) | f_top
        body_len = regime_len + es + t

        drop = body_len - (n - 1)  # >= 2: at least the round bit and one more
        kept = body >> drop
        round_bit = (body >> (drop - 1)) & 1
        sticky = ((body & ((one << (drop - 1)) - 1)) != 0) | f_sticky
        kept = kept + (round_bit & (sticky.to(torch.int64) | (kept & 1)))
        # Never round a nonzero value to zero, never overflow into NaR.
        kept = kept.clamp(1, self.max_code)

        neg = torch.signbit(x64)
        code = torch.where(neg, ((1 << n) - kept) & ((1 << n) - 1), kept)
        code = torch.where(zero, torch.zeros_like(code), code)
        code = torch.where(nar, torch.full_like(code, self.nar_code), code)
        return code.to(torch.int32)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
