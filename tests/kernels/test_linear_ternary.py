"""`ternary`: absmean trits (BitNet b1.58) on the 2-bit lookup-table kernel, every CPU variant
against the plain-torch reference."""

from __future__ import annotations

import pytest
import torch

from ember.kernels import native
from ember.kernels.linear import get_linear_method
from ember.kernels.linear.ternary import ternarize
from ember.kernels.linear.tmac import reference_apply
from tests.kernels.lut_check import assert_kernel_matches_reference

needs_native = pytest.mark.skipif(not native.available(), reason="the C kernels need a C compiler and AVX2")


def test_trits_are_the_absmean_rounding():
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    codes, gamma, minimum = ternarize(w)
    assert set(codes.unique().tolist()) == {0, 1, 2} and torch.equal(minimum, -gamma)
    g = w.view(16, 2, 64)
    torch.testing.assert_close(gamma.float(), g.abs().mean(-1), rtol=2 ** -10, atol=0)  # fp16 gamma
    trit = codes.view(16, 2, 64) - 1
    assert torch.equal(trit.float(), torch.round(g / gamma.float()[..., None]).clamp(-1, 1))
    method = get_linear_method("ternary")
    params = method.pack(w, None, torch.float32)
    assert params["lut_codes"].shape[2] == 1  # one plane pair: the tmac2 kind
    assert torch.equal(method.dequantize(params, torch.float32), (trit * gamma.float()[..., None]).view(16, 128))


@needs_native
@pytest.mark.parametrize("rows", [1, 6])
def test_kernel_matches_reference(rows, cpu_variant):
    assert_kernel_matches_reference("ternary", reference_apply, rows, 48)
