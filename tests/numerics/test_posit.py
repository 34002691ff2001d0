"""Posits against an exact rational reference (and SoftPosit where it exists).

The reference shares no code with ember.numerics.posit: it decodes bit strings
with Python string operations into Fractions, and encodes by searching the
table of all values. Bit-string round-to-nearest-even means: between adjacent
codes c and c+1 the rounding boundary is the value whose bit string is c
followed by a 1, i.e. the (n+1)-bit posit with code 2c+1; exactly on it, the
even code wins.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np
import pytest
import torch

from ember.numerics.formats import get_format

POSITS = [(4, 1), (8, 0), (8, 2), (16, 1)]
IDS = [f"posit{n}_{es}" for n, es in POSITS]


def ref_decode(code: int, n: int, es: int) -> Fraction | None:
    """Exact value of an n-bit posit code; None for NaR."""
    if code == 0:
        return Fraction(0)
    if code == 1 << (n - 1):
        return None
    neg = code >> (n - 1)
    if neg:
        code = (1 << n) - code
    s = format(code, f"0{n}b")[1:]  # the n-1 bits after the sign
    run = len(s) - len(s.lstrip(s[0]))
    k = run - 1 if s[0] == "1" else -run
    rest = s[run + 1 :]
    e_bits = (rest[:es]).ljust(es, "0")  # cut exponent bits read as zeros
    e = int(e_bits, 2) if es else 0
    f_bits = rest[es:]
    frac = Fraction(int(f_bits, 2), 1 << len(f_bits)) if f_bits else Fraction(0)
    v = (1 + frac) * Fraction(2) ** (k * (1 << es) + e)
    return -v if neg else v


@lru_cache(maxsize=None)
def ref_tables(n: int, es: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive values of posit(n, es) codes 1..maxpos, and the boundaries
    between them (odd codes of posit(n+1, es)), as float64.

    Every such value has at most 15 significant bits and a modest exponent, so
    float64 holds it exactly; the assertion checks that, so the numpy search
    below is an exact rational comparison.
    """
    maxcode = (1 << (n - 1)) - 1
    vals = [ref_decode(c, n, es) for c in range(1, maxcode + 1)]
    # The bit string of code c followed by a 1 is the (n+1)-bit code 2c+1.
    bounds = [ref_decode(2 * c + 1, n + 1, es) for c in range(1, maxcode)]
    out = []
    for seq in (vals, bounds):
        arr = np.array([float(v) for v in seq])
        assert all(Fraction(float(v)) == v for v in seq)
        out.append(arr)
    return out[0], out[1]


def ref_encode(x: np.ndarray, n: int, es: int) -> np.ndarray:
    vals, bounds = ref_tables(n, es)  # vals[i] is code i+1; bounds[i] lies between codes i+1 and i+2
    a = np.abs(x.astype(np.float64))
    maxcode = (1 << (n - 1)) - 1
    i = np.clip(np.searchsorted(vals, a, side="right") - 1, 0, maxcode - 2)  # code i+1 <= a (or below minpos)
    lo = i + 1
    b = bounds[i]
    code = np.where(a < b, lo, np.where(a > b, lo + 1, np.where(lo % 2 == 0, lo, lo + 1)))
    code = np.where(a <= vals[0], 1, code)  # no underflow to zero
    code = np.where(a >= vals[-1], maxcode, code)  # no overflow to NaR
    code = np.where(np.signbit(x) & (a > 0), (1 << n) - code, code)
    code = np.where(a == 0, 0, code)
    return np.where(~np.isfinite(x), 1 << (n - 1), code)


def probe_values(n: int, es: int) -> np.ndarray:
    """Every value, every bit-string and value midpoint, their float32
    neighbours, both signs, and values outside [minpos, maxpos]."""
    vals, bounds = ref_tables(n, es)
    value_mids = (vals[1:] + vals[:-1]) / 2
    base = np.concatenate([vals, bounds, value_mids]).astype(np.float32)
    near = np.concatenate([base, np.nextafter(base, np.float32(np.inf)), np.nextafter(base, np.float32(0))])
    extremes = np.array([vals[0] / 2, vals[0] / 1e3, vals[-1] * 2, 3e38, 1e-45], dtype=np.float32)
    pos = np.concatenate([near, extremes])
    return np.concatenate([pos, -pos])


@pytest.mark.parametrize("n,es", POSITS, ids=IDS)
def test_decode_every_code_is_exact(n, es):
    fmt = get_format(f"posit{n}_{es}")
    codes = torch.arange(1 << n)
    got = fmt.decode(codes).to(torch.float64).tolist()
    for c, v in enumerate(got):
        ref = ref_decode(c, n, es)
        if ref is None:
            assert v != v, f"code {c:#x} should decode to NaN (NaR)"
        else:
            assert Fraction(v) == ref, f"code {c:#x}: {v} != {ref}"


@pytest.mark.parametrize("n,es", POSITS, ids=IDS)
def test_every_code_round_trips(n, es):
    fmt = get_format(f"posit{n}_{es}")
    codes = torch.arange(1 << n, dtype=torch.int32)
    assert torch.equal(fmt.encode(fmt.decode(codes)), codes)  # NaR -> NaN -> NaR too


@pytest.mark.parametrize("n,es", POSITS, ids=IDS)
def test_encode_matches_exact_reference_around_every_value_and_midpoint(n, es):
    fmt = get_format(f"posit{n}_{es}")
    x = probe_values(n, es)
    np.testing.assert_array_equal(fmt.encode(torch.from_numpy(x)).numpy(), ref_encode(x, n, es))


@pytest.mark.parametrize("n,es", POSITS, ids=IDS)
def test_encode_matches_exact_reference_on_random_values(n, es):
    g = torch.Generator().manual_seed(n * 10 + es)
    x = (torch.randn(100_000, generator=g) * torch.exp(4 * torch.randn(100_000, generator=g))).numpy()
    np.testing.assert_array_equal(get_format(f"posit{n}_{es}").encode(torch.from_numpy(x)).numpy(), ref_encode(x, n, es))


def _softposit_codes(n: int, es: int, x: np.ndarray) -> np.ndarray:
    sp = pytest.importorskip("softposit")
    if (n, es) == (8, 0):
        return np.array([sp.posit8(float(v)).v.v for v in x])
    if (n, es) == (16, 1):
        return np.array([sp.posit16(float(v)).v.v for v in x])
    return np.array([sp.posit_2(float(v), n).v.v >> (32 - n) for v in x])  # posit(n, 2)


@pytest.mark.parametrize("n,es", [(8, 0), (8, 2), (16, 1)], ids=["posit8_0", "posit8_2", "posit16_1"])
def test_encode_matches_softposit(n, es):
    """SoftPosit (the posit reference library) implements posit8 with es=0,
    posit16 with es=1 and posit(n, 2); it has no posit(4, 1)."""
    x = probe_values(n, es)
    x = x[np.isfinite(x)]
    np.testing.assert_array_equal(get_format(f"posit{n}_{es}").encode(torch.from_numpy(x)).numpy(), _softposit_codes(n, es, x))


# ---- named special values -------------------------------------------------


@pytest.mark.parametrize("n,es", POSITS, ids=IDS)
def test_zero_and_nar(n, es):
    fmt = get_format(f"posit{n}_{es}")
    x = torch.tensor([0.0, -0.0, float("nan"), float("inf"), float("-inf")])
    nar = 1 << (n - 1)
    assert fmt.encode(x).tolist() == [0, 0, nar, nar, nar]  # posits have one zero
    assert torch.isnan(fmt.decode(torch.tensor([nar]))).all()


@pytest.mark.parametrize("n,es", POSITS, ids=IDS)
def test_no_underflow_to_zero(n, es):
    fmt = get_format(f"posit{n}_{es}")
    tiny = torch.tensor([fmt.min_value / 3, -fmt.min_value / 3, 1e-45, -1e-45])
    assert fmt.encode(tiny).tolist() == [1, (1 << n) - 1, 1, (1 << n) - 1]
    assert fmt.decode(torch.tensor([1])).item() == fmt.min_value == 2.0 ** (-(n - 2) * 2**es)


@pytest.mark.parametrize("n,es", POSITS, ids=IDS)
def test_no_overflow_to_nar(n, es):
    fmt = get_format(f"posit{n}_{es}")
    huge = torch.tensor([fmt.max_value * 3, -3e38])
    assert fmt.encode(huge).tolist() == [fmt.max_code, (1 << n) - fmt.max_code]
    assert fmt.decode(torch.tensor([fmt.max_code])).item() == fmt.max_value == 2.0 ** ((n - 2) * 2**es)


def test_rounding_is_on_the_bit_string_not_by_value():
    # posit(4,1): 4 = 0110 and 16 = 0111; the bit-string midpoint 0110|1 is 8.
    # 9 is nearer 4 in value but above the bit-string midpoint: it rounds to 16.
    p41 = get_format("posit4_1")
    assert p41.quantize(torch.tensor([7.9, 8.0, 9.0])).tolist() == [4.0, 4.0, 16.0]
    # posit(8,2) near maxpos: codes 0x7E = 2^20, 0x7F = 2^24, boundary 2^22
    # (exponent bits cut off); 2^22 ties to the even code, 2^23 rounds up.
    p82 = get_format("posit8_2")
    assert p82.encode(torch.tensor([2.0**22, 2.0**23])).tolist() == [0x7E, 0x7F]


def test_fraction_rounding_ties_to_even():
    p = get_format("posit8_0")  # between 1 and 2 the spacing is 1/32
    ones = torch.tensor([1 + 1 / 64, 1 + 3 / 64])  # halfway: 1 (even code 0x40) and 1+2/32 (0x42)
    assert p.encode(ones).tolist() == [0x40, 0x42]


def test_negative_is_twos_complement():
    p = get_format("posit16_1")
    x = torch.tensor([1.0, 3.14159, 1e-5, 1e5])
    assert torch.equal((p.encode(-x) + p.encode(x)) % (1 << 16), torch.zeros(4, dtype=torch.int32))
