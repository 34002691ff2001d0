"""Block floating point and dynamic fixed point: half-ulp bound, exponents, edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ember.numerics.bfp import bfp_decode, bfp_encode, bfp_quantize, dfp_decode, dfp_encode

finite_f32 = st.floats(min_value=-(2.0**60), max_value=2.0**60, allow_nan=False, width=32)
vectors = arrays(np.float32, st.integers(1, 150), elements=finite_f32)


def per_element_exponent(t, n: int) -> np.ndarray:
    return np.repeat(t.exponents.numpy().astype(np.int64), t.codes.shape[-1], axis=-1)[..., :n]


@settings(max_examples=80, deadline=None)
@given(x=vectors, block=st.sampled_from([8, 32, 64]), m=st.integers(2, 8))
def test_bfp_error_at_most_half_an_ulp_of_the_block_scale(x, block, m):
    t = bfp_encode(torch.from_numpy(x), block, m)
    y = bfp_decode(t).numpy().astype(np.float64)
    s = per_element_exponent(t, len(x))
    # The exponent clamp at -128 never binds for |x| >= 2^-100 or x == 0.
    assert np.all(np.abs(y - x) <= 2.0 ** (s - 1))
    qmax = 2 ** (m - 1) - 1
    codes = t.codes.numpy().astype(np.int64)
    assert codes.min() >= -qmax and codes.max() <= qmax
    # Each nonzero block's maximum uses the top mantissa bit (no wasted precision).
    top = np.abs(codes).max(axis=-1)
    nonzero = np.abs(np.pad(x, (0, (-len(x)) % block))).reshape(-1, block).max(axis=-1) >= 2.0**-100
    assert np.all(top[nonzero] >= 2 ** (m - 2))


def test_bfp_exact_values_and_exponent_bump():
    # m = 4: codes in [-7, 7]. amax 7 -> s = floor(log2 7) - 2 = 0, exact.
    t = bfp_encode(torch.tensor([7.0, -3.0, 0.5, 0.0]), block_size=4, mantissa_bits=4)
    assert t.exponents.tolist() == [0] and t.codes.tolist() == [[7, -3, 0, 0]]  # 0.5 ties to even 0
    # amax 7.6 would round to 8 > 7: the exponent moves up one instead of clipping.
    t = bfp_encode(torch.tensor([7.6, 1.0, 3.0, 2.9]), block_size=4, mantissa_bits=4)
    assert t.exponents.tolist() == [1] and t.codes.tolist() == [[4, 0, 2, 1]]  # 1.0/2 ties to 0, 3/2 to 2


def test_bfp_all_zero_block():
    t = bfp_encode(torch.zeros(64), block_size=32, mantissa_bits=4)
    assert t.exponents.tolist() == [-128, -128]
    assert not t.codes.any() and torch.equal(bfp_decode(t), torch.zeros(64))


def test_bfp_block_with_one_huge_outlier():
    x = torch.linspace(-1, 1, 32)
    x[3] = 1e6
    y = bfp_quantize(x, block_size=32, mantissa_bits=8)
    t = bfp_encode(x, block_size=32, mantissa_bits=8)
    ulp = 2.0 ** t.exponents.item()
    assert ulp == 2.0 ** (19 - 6)  # floor(log2 1e6) = 19, minus (m - 2)
    assert abs(y[3].item() - 1e6) <= ulp / 2
    assert torch.equal(y[torch.arange(32) != 3], torch.zeros(31))  # |x| <= 1 < ulp/2


def test_bfp_rejects_non_finite_and_bad_widths():
    with pytest.raises(ValueError, match="NaN or infinity"):
        bfp_encode(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="mantissa_bits"):
        bfp_encode(torch.ones(4), mantissa_bits=1)


def test_bfp_shapes_and_code_dtypes():
    x = torch.randn(3, 5, 70)
    t = bfp_encode(x, block_size=32, mantissa_bits=4)
    assert t.codes.shape == (3, 5, 3, 32) and t.codes.dtype == torch.int8
    assert t.exponents.shape == (3, 5, 3) and t.exponents.dtype == torch.int8
    assert bfp_decode(t).shape == x.shape
    assert bfp_encode(x, mantissa_bits=12).codes.dtype == torch.int16


@settings(max_examples=50, deadline=None)
@given(x=vectors, bits=st.sampled_from([8, 12, 16]))
def test_dfp_one_exponent_half_ulp(x, bits):
    t = dfp_encode(torch.from_numpy(x), bits)
    y = dfp_decode(t).numpy().astype(np.float64)
    assert np.all(np.abs(y - x) <= 2.0 ** (t.exponent - 1))
    assert t.codes.shape == x.shape


def test_dfp_int16_codes_and_exponent():
    x = torch.tensor([[1.0, -0.5], [0.25, 1e-6]])
    t = dfp_encode(x)
    assert t.codes.dtype == torch.int16 and t.exponent == -14  # 2^0 / 2^(16-2)
    assert t.codes.tolist() == [[16384, -8192], [4096, 0]]  # 1e-6 * 2^14 = 0.016 -> 0
    assert torch.equal(dfp_decode(t)[0], x[0])
