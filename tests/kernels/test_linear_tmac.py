"""`tmac-w2`, `tmac-w4`: the lookup-table kernel (csrc/linear_tmac.h) under every CPU variant
against its plain-torch reference (tmac_ref.py), the bit-plane packing, the quantizer, and
T-MAC's own accuracy check (NMSE against the float product of the same quantized weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ember.kernels import native
from ember.kernels.linear import get_linear_method
from ember.kernels.linear.tmac import pack_planes, reference_apply, unpack_planes, codes_from_indices
from ember.kernels.linear.tmac_ref import (build_tables, dequantize, quantize_rtn, quantize_tables,
                                           table_indices)

needs_native = pytest.mark.skipif(not native.available(), reason="the C kernels need a C compiler and AVX2")
METHODS = ["tmac-w2", "tmac-w4"]


def nmse(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((y.double() - ref.double()) ** 2).mean() / (ref.double() ** 2).mean())


@pytest.mark.parametrize("bits", [2, 4])
def test_packing_round_trips_and_puts_two_planes_of_a_row_side_by_side(bits):
    torch.manual_seed(bits)
    q = torch.randint(0, 1 << bits, (32, 128), dtype=torch.int32)
    scale, minimum = torch.rand(32, 2).half(), torch.randn(32, 2).half()
    params = pack_planes(q, scale, minimum, bits)
    assert params["lut_codes"].shape == (2, 2, bits // 2, 8, 32) and params["lut_scale_min"].shape == (2, 2, 2, 16)
    idx, s, m = unpack_planes(params)
    assert torch.equal(codes_from_indices(idx), q) and torch.equal(s, scale) and torch.equal(m, minimum)
    # Block 1 (rows 16-31), group 1, table pair 3, row 5, plane 1: byte 2 * 5 + 1, low nibble
    # table 16 + 6 (inputs 64 + 24..27), high nibble table 16 + 7 (inputs 64 + 28..31).
    row, byte = 21, int(params["lut_codes"][1, 1, 0, 3, 11])
    plane1 = (q[row] >> 1) & 1
    assert byte & 15 == sum(int(plane1[88 + j]) << j for j in range(4))
    assert byte >> 4 == sum(int(plane1[92 + j]) << j for j in range(4))


@pytest.mark.parametrize("bits", [2, 4])
def test_round_to_nearest_is_within_half_a_step(bits):
    torch.manual_seed(0)
    w = torch.randn(32, 256)
    q, scale, minimum = quantize_rtn(w, bits)
    assert int(q.min()) >= 0 and int(q.max()) < 1 << bits and scale.dtype == minimum.dtype == torch.float16
    step = scale.float().repeat_interleave(64, dim=1)
    slack = minimum.float().abs().repeat_interleave(64, dim=1) * 2 ** -11 + 1e-6  # the fp16 minimum's rounding
    assert bool(((dequantize(q, scale, minimum) - w).abs() <= step * 0.5 + slack).all())
    with pytest.raises(ValueError, match="multiple of 64"):
        quantize_rtn(torch.randn(16, 96), bits)


def test_tables_hold_the_sums_of_their_four_activations_and_quantize_per_group():
    x = torch.tensor([[1.0, 2.0, 4.0, -8.0] * 16])
    t = build_tables(x)[0, 0]
    assert t.tolist() == [sum(v for j, v in enumerate([1, 2, 4, -8]) if c >> j & 1) for c in range(16)]
    codes, d = quantize_tables(build_tables(x))
    assert float(d[0, 0]) == float(torch.tensor(8.0) / 127) and float(codes.abs().max()) == 127
    assert torch.equal(table_indices(torch.tensor([[3, 0, 1, 2]]), 2)[:, 0, 0], torch.tensor([1 | 4, 1 | 8]))


@needs_native
@pytest.mark.parametrize("method_name", METHODS)
@pytest.mark.parametrize("rows", [1, 3, 6, 21])
def test_kernel_matches_reference(method_name, rows, cpu_variant):
    """Every variant the CPU runs (AVX2 32-byte shuffles; AVX-512BW 64-byte ones) computes
    the reference's integer lookups: only the fp32 order of the per-group sums differs. Row
    counts: 1 and 3 (one tile, tables built per thread), 6 and 21 (shared tables, ragged tiles)."""
    method = get_linear_method(method_name)
    torch.manual_seed(rows)
    for n, k in [(48, 128), (32, 576)]:
        w, bias = torch.randn(n, k) * 0.05, torch.randn(n)
        params = method.pack(w, bias, torch.float32)
        assert method.kernel_takes_large_batches(params)
        x = torch.randn(rows, k)
        y, ref = method.apply(x, params), reference_apply(x, params)
        assert y.shape == (rows, n) and y.dtype == torch.float32
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@needs_native
@pytest.mark.parametrize("method_name", METHODS)
def test_nmse_against_the_float_product_of_the_same_weights(method_name):
    """T-MAC's check: the int8 tables cost < 5e-4 NMSE against the quantized weights' float
    product (~1.5e-4 measured at K = 1536 with Gaussian activations)."""
    method = get_linear_method(method_name)
    torch.manual_seed(7)
    w = torch.randn(64, 1536) * 0.05
    params = method.pack(w, None, torch.float32)
    x = torch.randn(4, 1536)
    assert nmse(method.apply(x, params), F.linear(x, method.dequantize(params, torch.float32))) < 5e-4


@pytest.mark.parametrize("method_name", METHODS)
def test_packed_bytes_and_refusals(method_name):
    method = get_linear_method(method_name)
    params = method.pack(torch.randn(32, 128), None, torch.float32)
    assert method.weight_bytes(params) == method.packed_bytes(32, 128, torch.float32) == 32 * 128 * method.bits // 8 + 32 * 2 * 4
    with pytest.raises(ValueError, match="multiple of 16"):
        method.pack(torch.randn(24, 128), None, torch.float32)


def test_without_the_c_kernels_the_dequantized_weight_is_used():
    method = get_linear_method("tmac-w4")
    params = method.pack(torch.randn(16, 64), None, torch.float32)
    x = torch.randn(2, 64)
    torch.testing.assert_close(method.fallback(x, params), F.linear(x, method.dequantize(params, torch.float32)))
