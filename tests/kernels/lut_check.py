"""The check every lookup-table method's kernel must pass, shared by its test files."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kernels.linear import get_linear_method


def assert_kernel_matches_reference(method_name: str, reference_apply, rows: int, out_features: int) -> None:
    """The C kernel (the variant loaded now) equals the plain-torch reference of the same packed
    weights, and stays within T-MAC's NMSE bound of the float product of its dequantized weights."""
    method = get_linear_method(method_name)
    torch.manual_seed(rows)
    w, bias = torch.randn(out_features, 192) * 0.05, torch.randn(out_features)
    params = method.pack(w, bias, torch.float32)
    x = torch.randn(rows, 192)
    y, ref = method.apply(x, params), reference_apply(x, params)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    exact = F.linear(x, method.dequantize(params, torch.float32), bias)
    assert float(((y - exact) ** 2).mean() / (exact ** 2).mean()) < 5e-4
