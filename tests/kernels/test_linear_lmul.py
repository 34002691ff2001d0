"""`lmul`, `lmul4` (csrc/linear_lmul.h): every product bit for bit ember/numerics/lmul.py's
L-Mul, and whole products within fp32 summation of the plain-torch reference, every CPU variant."""

from __future__ import annotations

import pytest
import torch

from ember.kernels import native
from ember.kernels.linear import get_linear_method
from ember.kernels.linear.lmul import reference_apply
from ember.numerics.lmul import lmul_bits

needs_native = pytest.mark.skipif(not native.available(), reason="the C kernels need a C compiler and AVX2")
METHODS = {"lmul": 7, "lmul4": 4}


def awkward_values(n: int, seed: int) -> torch.Tensor:
    """Values over a wide exponent range with zeros, signed zeros, subnormals and mantissas near
    a carry (1.9375 * 2^e), where the integer trick's cases differ."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=g) * torch.exp2(torch.randint(-20, 12, (n,), generator=g).float())
    v[::7] = 0.0
    v[3::11] = -0.0
    v[5::13] = 1e-40  # subnormal: flushed
    v[6::17] = -1.9375 * 2.0 ** 3
    v[8::19] = 1.96875
    return v


@needs_native
@pytest.mark.parametrize("name", list(METHODS))
def test_every_product_is_the_numerics_l_mul_bit_for_bit(name, cpu_variant):
    """One nonzero weight per row: y[m, n] is a single product, so the kernel's integer trick
    must equal lmul_bits exactly (zeros, flushes and carries included)."""
    method, m = get_linear_method(name), METHODS[name]
    k, n = 64, 64
    x = awkward_values(5 * k, 1).view(5, k)
    wv = awkward_values(n, 2)
    w = torch.zeros(n, k)
    w[torch.arange(n), torch.arange(n) % k] = wv
    params = method.pack(w, None, torch.float32)
    y = method.apply(x, params)
    wr = params["lmul_weight"].float()[torch.arange(n), torch.arange(n) % k]
    expected = lmul_bits(x[:, torch.arange(n) % k], wr[None, :], m)
    # bit for bit, but for a zero's sign: the row's sum starts from +0 and +0 + -0 is +0
    assert torch.equal(y.view(torch.int32), (expected + 0.0).view(torch.int32))


@needs_native
@pytest.mark.parametrize("rows", [1, 3, 5, 64])
@pytest.mark.parametrize("name", list(METHODS))
def test_kernel_matches_reference(name, rows, cpu_variant):
    method, m = get_linear_method(name), METHODS[name]
    torch.manual_seed(rows)
    w, bias = torch.randn(96, 192) * 0.05, torch.randn(96)
    w[0, :5] = 0.0
    params = method.pack(w, bias, torch.float32)
    x = torch.randn(rows, 192)
    x[0, 3] = 0.0
    y, ref = method.apply(x, params), reference_apply(x, params, m)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("name", list(METHODS))
def test_l_mul_error_is_what_the_paper_says(name):
    """Against the exact product of the same rounded operands, L-Mul's error per product is
    bounded (the mantissa product xm*ym, replaced by 2^-l, is < 1 of 4): sums stay close."""
    method, m = get_linear_method(name), METHODS[name]
    torch.manual_seed(0)
    w, x = torch.randn(64, 256) * 0.05, torch.randn(8, 256)
    params = method.pack(w, None, torch.float32)
    from ember.numerics.lmul import round_mantissa
    exact = round_mantissa(x, m) @ params["lmul_weight"].float().t()
    y = reference_apply(x, params, m)
    nmse = float(((y - exact) ** 2).mean() / (exact ** 2).mean())
    assert 0 < nmse < 0.02, nmse


def test_pack_rounds_weights_to_m_mantissa_bits():
    w = torch.randn(32, 64)
    for name, m in METHODS.items():
        stored = get_linear_method(name).pack(w, None, torch.float32)["lmul_weight"]
        assert stored.dtype == torch.bfloat16
        bits = stored.float().view(torch.int32)
        assert int((bits & ((1 << (23 - m)) - 1)).abs().max()) == 0
