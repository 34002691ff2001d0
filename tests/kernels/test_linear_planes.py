"""Bit planes with a scale each (csrc/linear_planes.h): `tmac-w1`, `tmac-w3` (round-to-nearest)
and `bcq-w2/3/4` (ShiftAddLLM's binary coding; `-pow2`: its power-of-two alphas), every CPU variant against the plain-torch
reference, the packing, and the BCQ quantizer."""

from __future__ import annotations

import pytest
import torch

from ember.kernels import native
from ember.kernels.linear import get_linear_method
from ember.kernels.linear.bcq import _nearest_signs, _signs, bcq_planes, binary_coding, pow2_alphas
from ember.kernels.linear.planes import pack_scaled_planes, reference_apply, rtn_planes, unpack_scaled_planes
from ember.kernels.linear.tmac_ref import dequantize, quantize_rtn
from tests.kernels.lut_check import assert_kernel_matches_reference

needs_native = pytest.mark.skipif(not native.available(), reason="the C kernels need a C compiler and AVX2")
METHODS = ["tmac-w1", "tmac-w3", "bcq-w2", "bcq-w3", "bcq-w4", "bcq-w2-pow2", "bcq-w3-pow2"]


def test_packing_round_trips_and_puts_rows_e_and_16_plus_e_in_a_byte_pair():
    torch.manual_seed(0)
    bits = torch.randint(0, 2, (3, 64, 128), dtype=torch.uint8)
    scales, minimum = torch.rand(3, 64, 2).half(), torch.randn(64, 2).half()
    params = pack_scaled_planes(bits, scales, minimum)
    assert params["lut_codes"].shape == (2, 2, 3, 8, 32) and params["lut_plane_scales"].shape == (2, 2, 4, 32)
    idx, s, m = unpack_scaled_planes(params)
    assert torch.equal(s, scales) and torch.equal(m, minimum)
    # Block 1 (rows 32-63), group 1, plane 2, table pair 5, byte 2 * 3 + 1: row 32 + 16 + 3,
    # tables 16 + 10 (inputs 64 + 40..43, low nibble) and 16 + 11 (inputs 64 + 44..47, high).
    byte, row = int(params["lut_codes"][1, 1, 2, 5, 7]), 51
    assert byte & 15 == sum(int(bits[2, row, 104 + j]) << j for j in range(4)) == int(idx[2, row, 26])
    assert byte >> 4 == sum(int(bits[2, row, 108 + j]) << j for j in range(4))


def test_rtn_planes_weigh_powers_of_two_of_the_scale():
    w = torch.randn(32, 128)
    planes, scales, minimum = rtn_planes(w, 3)
    q, scale, minimum_rtn = quantize_rtn(w, 3)
    assert torch.equal(minimum, minimum_rtn) and torch.equal(scales[2].float(), 4 * scale.float())
    params = pack_scaled_planes(planes, scales, minimum)
    assert torch.equal(get_linear_method("tmac-w3").dequantize(params, torch.float32), dequantize(q, scale, minimum))


def test_binary_coding_refinement_beats_its_greedy_start():
    torch.manual_seed(1)
    w = torch.randn(32, 128)
    errors = []
    for rounds in (0, 10):
        b, a = binary_coding(w, 3, rounds)
        errors.append(float(((b * a[..., None, :]).sum(-1).view(32, 128) - w).norm() / w.norm()))
    assert errors[1] < errors[0] * 0.9  # ~0.23 -> ~0.18 on Gaussian weights
    planes, scales, minimum = bcq_planes(w, 3)
    deq = get_linear_method("bcq-w3").dequantize(pack_scaled_planes(planes, scales, minimum), torch.float32)
    assert float((deq - w).norm() / w.norm()) < errors[1] * 1.01  # the fp16 values cost next to nothing
    assert float((deq - w).norm() / w.norm()) < float((dequantize(*quantize_rtn(w, 3)) - w).norm() / w.norm())


def _relative_error(b: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> float:
    return float(((b * a[..., None, :]).sum(-1).view(w.shape) - w).norm() / w.norm())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_pow2_alphas_are_powers_of_two_and_refit_under_the_constraint(bits):
    """Every stored plane scale (2 alpha) of the -pow2 methods is exactly a power of two, and
    refitting with the constraint beats rounding the unconstrained fit once at the end."""
    torch.manual_seed(bits)
    w = torch.randn(64, 256) * 0.02
    b, a = binary_coding(w, bits, pow2=True)
    assert torch.equal(a, torch.exp2(torch.log2(a).round())) and bool((a > 0).all())
    _, a_free = binary_coding(w, bits)
    once = pow2_alphas(a_free)
    signs = _signs(bits)
    b_once = _nearest_signs(w.view(64, -1, 64), once @ signs.t(), signs)
    assert _relative_error(b, a, w) < _relative_error(b_once, once, w)
    method = get_linear_method(f"bcq-w{bits}-pow2")
    _, scales, _ = unpack_scaled_planes(method.pack(w, None, torch.float32))
    s = scales.float()
    assert torch.equal(s, torch.exp2(torch.log2(s).round()))


@needs_native
@pytest.mark.parametrize("method_name", METHODS)
@pytest.mark.parametrize("rows", [1, 6])
def test_kernel_matches_reference(method_name, rows, cpu_variant):
    assert_kernel_matches_reference(method_name, reference_apply, rows, 64)


@pytest.mark.parametrize("method_name", METHODS)
def test_packed_bytes_and_refusals(method_name):
    method = get_linear_method(method_name)
    params = method.pack(torch.randn(32, 128), None, torch.float32)
    assert method.weight_bytes(params) == method.packed_bytes(32, 128, torch.float32)
    with pytest.raises(ValueError, match="multiple of 32"):
        method.pack(torch.randn(16, 128), None, torch.float32)
