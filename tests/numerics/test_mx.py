"""OCP MX block formats: scale choice, elements, error bounds, special blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ember.numerics.mx import E8M0_NAN, MX_FORMATS, mx_decode, mx_encode, mx_quantize

ml_dtypes = pytest.importorskip("ml_dtypes")

ELEMENT_REF = {  # ml_dtypes type of each element format (saturation done by clipping)
    "mxfp8_e4m3": ml_dtypes.float8_e4m3fn,
    "mxfp8_e5m2": ml_dtypes.float8_e5m2,
    "mxfp6_e3m2": ml_dtypes.float6_e3m2fn,
    "mxfp6_e2m3": ml_dtypes.float6_e2m3fn,
    "mxfp4": ml_dtypes.float4_e2m1fn,
}
NAMES = list(MX_FORMATS)

finite_f32 = st.floats(min_value=-(2.0**100), max_value=2.0**100, allow_nan=False, width=32)
blocks = arrays(np.float32, st.integers(1, 100), elements=finite_f32)


def block_view(x: np.ndarray) -> np.ndarray:
    pad = (-len(x)) % 32
    return np.pad(x, (0, pad)).reshape(-1, 32)


@pytest.mark.parametrize("name", NAMES)
def test_scale_is_floor_log2_amax_minus_emax(name):
    fmt = MX_FORMATS[name]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, generator=g) * torch.exp(5 * torch.randn(64, 1, generator=g))
    t = mx_encode(x, fmt)
    for row, code in zip(x.tolist(), t.scales.flatten().tolist()):
        amax = max(abs(v) for v in row)
        expected = math.frexp(amax)[1] - 1 - fmt.emax_elem  # floor(log2 amax) - emax_elem
        assert code == max(-127, min(127, expected)) + 127


@pytest.mark.parametrize("name", list(ELEMENT_REF))
def test_elements_are_saturated_round_to_nearest_even_of_x_over_scale(name):
    fmt = MX_FORMATS[name]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(256, 32, generator=g) * torch.exp(3 * torch.randn(256, 1, generator=g))
    t = mx_encode(x, fmt)
    scale = 2.0 ** (t.scales.to(torch.float64) - 127)
    ratio = (x.to(torch.float64) / scale).numpy()  # exact: power-of-two scaling
    ratio = np.clip(ratio, -fmt.element.max_value, fmt.element.max_value).astype(np.float32)
    ref = ratio.astype(ELEMENT_REF[name]).view(np.uint8)
    np.testing.assert_array_equal(t.codes.numpy().reshape(ref.shape), ref)


def test_mxint8_elements():
    x = torch.tensor([[1.0, -1.0, 0.5, 0.25 + 2**-8, 1.0 / 3] + [0.0] * 27])
    t = mx_encode(x, "mxint8")
    assert t.scales.item() == 127  # amax 1 -> s = 0 - emax_elem(0) = 0
    # code = round_half_even(v * 64), saturating at +-127.
    assert t.codes[0, 0, :5].tolist() == [64, -64, 32, 16, 21]
    big = mx_encode(torch.tensor([[1.999] + [0.0] * 31]), "mxint8")
    assert big.codes[0, 0, 0].item() == 127  # 1.999 * 64 = 127.9 -> saturates at 127


@settings(max_examples=60, deadline=None)
@given(x=blocks, name=st.sampled_from(NAMES))
def test_error_is_at_most_half_an_element_ulp_or_the_saturation_gap(x, name):
    fmt = MX_FORMATS[name]
    t = mx_encode(torch.from_numpy(x), fmt)
    y = mx_decode(t).numpy().astype(np.float64)
    s = np.repeat(t.scales.numpy().astype(np.int64) - 127, 32)[: len(x)]
    r = np.abs(x.astype(np.float64)) / 2.0**s  # magnitude in element units
    if fmt.element is None:
        half_ulp = np.full_like(r, 2.0**-7)
        max_elem, top = 127 / 64, 2.0
    else:
        m, emin = fmt.element.man_bits, fmt.element.emin
        e = np.maximum(np.floor(np.log2(np.where(r > 0, r, 1.0))), emin)
        half_ulp = 2.0 ** (e - m - 1)
        max_elem, top = fmt.element.max_value, 2.0 ** (fmt.emax_elem + 1)
    bound = np.where(r > max_elem, top - max_elem, half_ulp) * 2.0**s
    assert np.all(np.abs(y - x) <= bound)
    assert np.all(r < top)  # the scale choice keeps every element below 2^(emax+1)


@pytest.mark.parametrize("name", NAMES)
def test_all_zero_block(name):
    t = mx_encode(torch.zeros(2, 32), name)
    assert t.scales.tolist() == [[0], [0]]  # s = -127, the smallest scale
    assert not t.codes.to(torch.int64).any()
    assert torch.equal(mx_decode(t), torch.zeros(2, 32))


@pytest.mark.parametrize("name", NAMES)
def test_block_with_one_huge_outlier(name):
    fmt = MX_FORMATS[name]
    x = torch.full((32,), 1.0)
    x[7] = 2.0**40
    y = mx_quantize(x, fmt)
    assert y[7].item() == 2.0**40  # the outlier sets the scale and is exact
    # Everything else is 2^-40 of the block maximum: below the smallest
    # nonzero element, so it flushes to zero; that is MX's known weakness.
    assert torch.equal(y[torch.arange(32) != 7], torch.zeros(31))


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_block_decodes_to_nan_and_leaves_other_blocks_alone(name):
    x = torch.ones(3, 32)
    x[1, 5] = float("nan")
    x[2, 0] = float("inf")
    t = mx_encode(x, name)
    assert t.scales[:, 0].tolist() == [127 - MX_FORMATS[name].emax_elem, E8M0_NAN, E8M0_NAN]  # amax 1
    y = mx_decode(t)
    assert torch.isnan(y[1:]).all() and torch.equal(y[0], torch.ones(32))


def test_ragged_last_block_and_batch_shape():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 40, generator=g)
    t = mx_encode(x, "mxfp8_e4m3")
    assert t.codes.shape == (2, 3, 2, 32) and t.scales.shape == (2, 3, 2)
    y = mx_decode(t)
    assert y.shape == x.shape
    # Same result as encoding each row's two blocks separately.
    assert torch.equal(y[..., :32], mx_quantize(x[..., :32], "mxfp8_e4m3"))


def test_bits_per_element():
    assert MX_FORMATS["mxfp4"].bits_per_element == 4.25
    assert MX_FORMATS["mxint8"].bits_per_element == 8.25
