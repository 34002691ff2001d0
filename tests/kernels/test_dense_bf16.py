"""`dense` in bf16: where the CPU has no native bf16 arithmetic the products run on the C
kernels (bf16 widened in registers, fp32 sums), elsewhere on torch's bf16 GEMM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ember.kernels import native
from ember.kernels.linear import get_linear_method


@pytest.fixture
def bf16_gemm(monkeypatch):
    """Set EMBER_BF16_GEMM for one test, with the cached guess cleared before and after."""
    def force(value: str) -> None:
        monkeypatch.setenv("EMBER_BF16_GEMM", value)
        native.cpu_has_bf16_gemm.cache_clear()
    yield force
    monkeypatch.delenv("EMBER_BF16_GEMM", raising=False)
    native.cpu_has_bf16_gemm.cache_clear()


def test_the_override_decides_the_route(bf16_gemm):
    bf16_gemm("torch")
    assert native.cpu_has_bf16_gemm()
    bf16_gemm("native")
    assert not native.cpu_has_bf16_gemm()


@pytest.mark.skipif(not native.available(), reason="the C kernels need a C compiler and AVX2")
@pytest.mark.parametrize("rows", [1, 40])
def test_bf16_products_take_the_c_kernel_without_a_bf16_gemm(bf16_gemm, rows, cpu_variant):
    """The C route sums in fp32 and rounds once: it equals the fp32 product of the same values,
    rounded to bf16 (to an ulp: the sums run in another order), then the bf16 bias added."""
    torch.manual_seed(rows)
    method = get_linear_method("dense")
    params = method.pack(torch.randn(300, 576), torch.randn(300), torch.bfloat16)
    x = torch.randn(rows, 576).bfloat16()
    exact = (F.linear(x.float(), params["weight"].float()).bfloat16() + params["bias"])
    bf16_gemm("native")
    assert method.kernel_takes_large_batches(params)
    got = method.apply(x, params)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, exact, rtol=2 ** -7, atol=2 ** -7 * float(exact.abs().max()))
    bf16_gemm("torch")
    assert not method.kernel_takes_large_batches(params)
    assert torch.equal(method.apply(x, params), F.linear(x, params["weight"], params["bias"]))
