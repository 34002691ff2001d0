"""int-k with per-group scale and zero point: exhaustive over codes, properties."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ember.numerics.intk import code_range, int_decode, int_encode, int_encode_with, int_quantize

CASES = [(k, signed) for k in (2, 3, 4, 8, 16) for signed in (True, False)]
IDS = [f"{'s' if s else 'u'}int{k}" for k, s in CASES]


@pytest.mark.parametrize("bits,signed", CASES, ids=IDS)
def test_every_code_and_midpoint_against_exact_rounding(bits, signed):
    """With a fixed scale and zero point: every code round-trips, and every
    midpoint (and its neighbours) encodes as exact round-half-even would."""
    qmin, qmax = code_range(bits, signed)
    # An awkward float32 scale (not a power of two) and zero point.
    scale, zp = float(np.float32(0.0375)), (qmin + qmax) // 3
    codes = np.arange(qmin, qmax + 1)
    values = (codes - zp) * np.float64(scale)
    back = int_encode_with(torch.from_numpy(values), torch.tensor(scale, dtype=torch.float64), torch.tensor(zp), bits, signed)
    assert torch.equal(back, torch.from_numpy(codes))

    mids = (codes[:-1] - zp + 0.5) * np.float64(scale)
    probes = np.concatenate([mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf),
                             [(qmin - zp - 3) * scale, (qmax - zp + 3) * scale]])
    got = int_encode_with(torch.from_numpy(probes), torch.tensor(scale, dtype=torch.float64), torch.tensor(zp), bits, signed)
    fs = Fraction(scale)
    # Python's round() on a Fraction is exact round-half-to-even.
    ref = [min(qmax, max(qmin, round(Fraction(p) / fs) + zp)) for p in probes.tolist()]
    assert got.tolist() == ref


finite = st.floats(min_value=-(2.0**40), max_value=2.0**40, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(x=arrays(np.float32, st.integers(1, 200), elements=finite), bits=st.sampled_from([2, 4, 8]),
       signed=st.booleans(), symmetric=st.booleans(), group=st.sampled_from([16, 64]))
def test_error_at_most_half_a_step_and_zero_exact(x, bits, signed, symmetric, group):
    if symmetric and not signed:
        with pytest.raises(ValueError):
            int_encode(torch.from_numpy(x), bits=bits, group_size=group, signed=False, symmetric=True)
        return
    t = int_encode(torch.from_numpy(x), bits=bits, group_size=group, signed=signed, symmetric=symmetric)
    y = int_decode(t).numpy().astype(np.float64)
    scale = np.repeat(t.scales.numpy().astype(np.float64), group)[: len(x)]
    # Half a step, plus the float32 rounding of the decoded value.
    assert np.all(np.abs(y - x) <= 0.5 * scale + np.abs(y) * 2.0**-24)
    assert np.all(y[x == 0] == 0)  # zero is always exactly representable
    qmin, qmax = code_range(bits, signed)
    c = t.codes.numpy().astype(np.int64)
    assert c.min() >= qmin and c.max() <= qmax


def test_symmetric_is_odd_and_uses_symmetric_range():
    x = torch.tensor([-1.0, -0.3, 0.0, 0.3, 1.0, 0.7, -0.7, 0.1])
    t = int_encode(x, bits=4, group_size=8)
    assert t.zero_points.tolist() == [0]
    assert t.codes.tolist() == [[-7, -2, 0, 2, 7, 5, -5, 1]]  # scale 1/7
    assert torch.equal(int_quantize(-x, bits=4, group_size=8), -int_quantize(x, bits=4, group_size=8))


def test_asymmetric_unsigned_uses_the_full_range():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    t = int_encode(x, bits=2, group_size=4, signed=False, symmetric=False)
    assert t.scales.tolist() == [1.0] and t.zero_points.tolist() == [0]
    assert t.codes.tolist() == [[0, 1, 2, 3]]
    # Signed codes for all-positive data: the zero point shifts 0.0 to qmin.
    t = int_encode(x, bits=2, group_size=4, signed=True, symmetric=False)
    assert t.codes.tolist() == [[-2, -1, 0, 1]] and t.zero_points.tolist() == [-2]
    assert torch.equal(int_decode(t), x)


def test_all_zero_group_and_groups_are_independent():
    x = torch.cat([torch.zeros(8), torch.tensor([1.0] * 8)])
    t = int_encode(x, bits=8, group_size=8)
    assert t.scales.tolist() == [1.0, float(np.float32(1 / 127))]
    assert torch.equal(int_decode(t)[:8], torch.zeros(8))
    assert torch.allclose(int_decode(t)[8:], torch.ones(8))


def test_rejects_non_finite_and_bad_widths():
    with pytest.raises(ValueError, match="NaN or infinity"):
        int_encode(torch.tensor([float("nan"), 1.0]))
    with pytest.raises(ValueError):
        code_range(1, True)
