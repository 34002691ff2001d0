"""fp8/fp6/fp4 against ml_dtypes: every code, every neighbourhood, every midpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ml_dtypes = pytest.importorskip("ml_dtypes")

from ember.numerics.formats import get_format  # noqa: E402

# (our name, ml_dtypes type); ml_dtypes' conversions are round-to-nearest-even,
# e4m3fn overflows to NaN, e5m2 to inf, and the fp6/fp4 types saturate.
FORMATS = [
    ("fp8_e4m3", ml_dtypes.float8_e4m3fn),
    ("fp8_e5m2", ml_dtypes.float8_e5m2),
    ("fp6_e2m3", ml_dtypes.float6_e2m3fn),
    ("fp6_e3m2", ml_dtypes.float6_e3m2fn),
    ("fp4_e2m1", ml_dtypes.float4_e2m1fn),
]
IDS = [name for name, _ in FORMATS]


def all_codes(bits: int) -> torch.Tensor:
    return torch.arange(1 << bits, dtype=torch.int64).to(torch.uint8)


def ref_codes(x: np.ndarray, dtype) -> np.ndarray:
    return x.astype(np.float32).astype(dtype).view(np.uint8)


def probe_values(fmt) -> np.ndarray:
    """Every finite value, its float32 neighbours, every midpoint between
    adjacent values (and its float32 neighbours), the overflow threshold, both
    signs, plus zero."""
    vals = fmt.decode(all_codes(fmt.bits)).numpy()
    pos = np.unique(vals[np.isfinite(vals) & (vals >= 0)]).astype(np.float64)
    top_step = pos[-1] - pos[-2]  # spacing in the top binade
    # Midpoints, including the one between the largest finite value and the
    # next step above it, where overflow starts.
    mids = np.concatenate([(pos[1:] + pos[:-1]) / 2, [pos[-1] + top_step / 2]])
    base = np.concatenate([pos, mids]).astype(np.float32)
    near = np.concatenate([base, np.nextafter(base, np.float32(np.inf)), np.nextafter(base, np.float32(-np.inf))])
    return np.concatenate([near, -near, [4 * pos[-1], -4 * pos[-1]]]).astype(np.float32)


@pytest.mark.parametrize("name,dtype", FORMATS, ids=IDS)
def test_decode_every_code_matches_ml_dtypes(name, dtype):
    fmt = get_format(name)
    codes = all_codes(fmt.bits)
    ref = codes.numpy().view(dtype).astype(np.float32)
    np.testing.assert_array_equal(fmt.decode(codes).numpy(), ref)  # NaN == NaN here


@pytest.mark.parametrize("name,dtype", FORMATS, ids=IDS)
def test_every_code_round_trips(name, dtype):
    fmt = get_format(name)
    codes = all_codes(fmt.bits)
    values = fmt.decode(codes)
    back = fmt.encode(values)
    nan = torch.isnan(values)
    assert torch.equal(back[~nan], codes[~nan])
    # NaN codes decode to NaN and re-encode to a NaN code (the canonical one).
    assert torch.isnan(fmt.decode(back[nan])).all()


@pytest.mark.parametrize("name,dtype", FORMATS, ids=IDS)
def test_encode_matches_ml_dtypes_around_every_value_and_midpoint(name, dtype):
    fmt = get_format(name)
    x = probe_values(fmt)
    got = fmt.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, ref_codes(x, dtype))


@pytest.mark.parametrize("name,dtype", FORMATS[:2], ids=IDS[:2])
def test_saturating_fp8_matches_clipped_reference(name, dtype):
    fmt = get_format(name, saturate=True)
    x = probe_values(fmt)
    x = np.concatenate([x, [np.inf, -np.inf]]).astype(np.float32)
    ref = ref_codes(np.clip(x, -fmt.max_value, fmt.max_value), dtype)
    np.testing.assert_array_equal(fmt.encode(torch.from_numpy(x)).numpy(), ref)


@pytest.mark.parametrize("name,dtype", FORMATS, ids=IDS)
def test_random_values_match_ml_dtypes(name, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g) * torch.exp(3 * torch.randn(200_000, generator=g))
    np.testing.assert_array_equal(get_format(name).encode(x).numpy(), ref_codes(x.numpy(), dtype))


# ---- named special values -------------------------------------------------


@pytest.mark.parametrize("name", IDS)
def test_signed_zero(name):
    fmt = get_format(name)
    codes = fmt.encode(torch.tensor([0.0, -0.0]))
    assert codes.tolist() == [0, 1 << (fmt.bits - 1)]
    back = fmt.decode(codes)
    assert back.tolist() == [0.0, 0.0] and torch.signbit(back).tolist() == [False, True]


def test_e5m2_overflow_and_inf_give_inf():
    fmt = get_format("fp8_e5m2")
    # 61440 is halfway between 57344 (max, mantissa 11) and 65536: ties to even -> inf.
    x = torch.tensor([61439.0, 61440.0, float("inf"), float("-inf"), -1e9])
    assert fmt.decode(fmt.encode(x)).tolist() == [57344.0, float("inf"), float("inf"), float("-inf"), float("-inf")]
    assert fmt.encode(torch.tensor([float("inf")])).item() == 0x7C


def test_e4m3_overflow_is_nan_and_ties_down_at_464():
    fmt = get_format("fp8_e4m3")
    codes = fmt.encode(torch.tensor([464.0, 464.0001, float("inf"), -500.0]))
    # 464 is halfway from 448 (0x7E) to the NaN slot 480: even mantissa wins.
    assert codes.tolist() == [0x7E, 0x7F, 0x7F, 0xFF]


def test_nan_encodings():
    nan = torch.tensor([float("nan")])
    assert get_format("fp8_e4m3").encode(nan).item() == 0x7F
    assert get_format("fp8_e5m2").encode(nan).item() == 0x7E
    for name in ("fp6_e2m3", "fp6_e3m2", "fp4_e2m1"):
        with pytest.raises(ValueError, match="no NaN"):
            get_format(name).encode(nan)


@pytest.mark.parametrize("name,max_value", [
    ("fp8_e4m3", 448.0), ("fp8_e5m2", 57344.0), ("fp6_e2m3", 7.5), ("fp6_e3m2", 28.0), ("fp4_e2m1", 6.0)])
def test_largest_finite(name, max_value):
    fmt = get_format(name)
    assert fmt.max_value == max_value
    assert fmt.quantize(torch.tensor([max_value, -max_value])).tolist() == [max_value, -max_value]


@pytest.mark.parametrize("name", ["fp6_e2m3", "fp6_e3m2", "fp4_e2m1"])
def test_fp6_fp4_always_saturate(name):
    fmt = get_format(name)
    x = torch.tensor([1e30, -1e30, float("inf"), float("-inf")])
    assert fmt.quantize(x).tolist() == [fmt.max_value, -fmt.max_value, fmt.max_value, -fmt.max_value]
    with pytest.raises(ValueError):
        type(fmt)(fmt.name, fmt.exp_bits, fmt.man_bits, fmt.bias, "none", saturate=False)


@pytest.mark.parametrize("name,smallest", [
    ("fp8_e4m3", 2.0**-9), ("fp8_e5m2", 2.0**-16), ("fp6_e2m3", 0.125), ("fp6_e3m2", 0.0625), ("fp4_e2m1", 0.5)])
def test_smallest_subnormal(name, smallest):
    fmt = get_format(name)
    assert fmt.decode(torch.tensor([1], dtype=torch.uint8)).item() == smallest
    # Half of it is a tie between 0 (even) and code 1: rounds to zero; a hair
    # above rounds up; 1.5x is a tie between codes 1 and 2: rounds to 2.
    x = torch.tensor([smallest / 2, np.nextafter(np.float32(smallest / 2), np.float32(1)), 1.5 * smallest])
    assert fmt.encode(x).tolist() == [0, 1, 2]


@pytest.mark.parametrize("name", IDS)
def test_subnormals_are_evenly_spaced_below_min_normal(name):
    fmt = get_format(name)
    sub = fmt.decode(torch.arange(1 << fmt.man_bits).to(torch.uint8)).to(torch.float64)
    step = 2.0 ** (fmt.emin - fmt.man_bits)
    assert torch.equal(sub, torch.arange(1 << fmt.man_bits, dtype=torch.float64) * step)
    assert fmt.decode(torch.tensor([1 << fmt.man_bits], dtype=torch.uint8)).item() == 2.0**fmt.emin


def test_registry_rejects_unknown_names():
    with pytest.raises(KeyError, match="unknown format"):
        get_format("fp7_e3m3")
