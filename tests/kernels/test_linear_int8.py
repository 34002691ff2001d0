"""`int8` LinearMethod: the aten kernel against the plain-torch reference, and the quantization error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ember.kernels import native
from ember.kernels.linear import get_linear_method
from ember.kernels.linear.int8 import (Int8Linear, dequantize_int8, native_reference_apply, quantize_int8,
                                       reference_apply)

needs_native = pytest.mark.skipif(not native.available(), reason="the C kernels need a C compiler and AVX2")


@pytest.fixture(scope="module")
def weights(ember_lm):
    """Real projections of the default model: fused QKV [960, 576] and down [576, 1536] of layer 3."""
    layer = ember_lm.model.layers[3]
    return [layer.qkv_proj.params["weight"], layer.down_proj.params["weight"]]


def test_quantization_error_is_within_half_a_step(weights):
    for w in weights:
        q, scale = quantize_int8(w)
        assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
        deq = dequantize_int8({"qweight": q, "scale": scale})
        err = (deq - w).abs()
        # Half a step from rounding, plus a little for the bf16 scale (codes are chosen against it).
        assert bool((err <= scale.float()[:, None] * 0.5 + 1e-6).all())
        rel = (deq - w).norm() / w.norm()
        assert rel < 0.01, f"relative Frobenius error {rel:.4f}"


@pytest.mark.parametrize("rows", [1, 7, 32])
def test_aten_kernel_matches_reference(weights, rows):
    method = Int8Linear(use_native=False)  # the row-major storage aten takes
    torch.manual_seed(rows)
    for w in weights:
        params = method.pack(w, None, torch.float32)
        x = torch.randn(rows, w.shape[1])
        y, ref = Int8Linear.apply_aten(x, params).float(), reference_apply(x, params)
        assert y.shape == (rows, w.shape[0]) and y.dtype == torch.float32
        # The kernel's only extra rounding is its bf16 output: < 2^-8 relative per element.
        assert bool(((y - ref).abs() <= ref.abs() * 2 ** -8 + 1e-4 * ref.abs().max()).all())
        # And against the float weight: the error of int8 weights with bf16 activations.
        exact = F.linear(x, w)
        assert (y - exact).norm() / exact.norm() < 0.02


@needs_native
# Every tile of every variant: AVX2's 6-row tile and its <= 3-row form; AVX-512's 16-row tile,
# its <= 3-row form, and the even split of 17 and 33 rows into tiles.
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 13, 16, 17, 32, 33])
def test_native_kernel_matches_reference(weights, rows, cpu_variant):
    method = get_linear_method("int8")
    torch.manual_seed(100 + rows)
    for w in weights:
        params = method.pack(w, None, torch.float32)
        x = torch.randn(rows, w.shape[1]) * 3
        y, ref = method.apply(x, params), native_reference_apply(x, params)
        # Same fp32 products, only summed in another order.
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
        exact = F.linear(x, w)
        assert (y - exact).norm() / exact.norm() < 0.01  # more exact than the bf16 aten path


@needs_native
@pytest.mark.parametrize("rows", [4, 9])
def test_native_kernel_rows_are_independent(weights, rows):
    """A row's result depends only on that row: replacing a neighbour by an outlier changes
    nothing else, bit for bit; and any batch size agrees with rows taken alone to fp32 rounding."""
    method = get_linear_method("int8")
    params = method.pack(weights[0], None, torch.float32)
    x = torch.randn(rows, weights[0].shape[1])
    y = method.apply(x, params)
    x[2] *= 50
    y2 = method.apply(x, params)
    keep = [i for i in range(rows) if i != 2]
    assert torch.equal(y[keep], y2[keep])
    alone = torch.cat([method.apply(x[i:i + 1], params) for i in range(rows)])
    torch.testing.assert_close(y2, alone, rtol=1e-5, atol=1e-5 * float(alone.abs().max()))


def test_large_batches_take_the_dense_path_exactly(weights, monkeypatch):
    monkeypatch.setattr(native, "wide_vectors", lambda: False)  # as on an AVX2 machine
    method = get_linear_method("int8")
    w = weights[0]
    params = method.pack(w, torch.randn(w.shape[0]), torch.float32)
    assert not method.kernel_takes_large_batches(params)
    x = torch.randn(method.dense_rows + 3, w.shape[1])
    y = method.apply(x, params)
    torch.testing.assert_close(y, F.linear(x, dequantize_int8(params), params["bias"]), rtol=1e-5, atol=1e-5)
    # Small batches add the bias too, and leading dims are kept.
    y3 = method.apply(x[:4].view(2, 2, -1), params)
    assert y3.shape == (2, 2, w.shape[0])
    torch.testing.assert_close(method.apply(x[:4], params), y3.view(4, -1))


@needs_native
@pytest.mark.parametrize("rows", [64, 200])
def test_large_batches_take_the_c_kernel_under_avx512(weights, rows, cpu_variant):
    """AVX-512 variants: prefill-sized batches on the panel kernel, held to the same reference;
    AVX2: the dense path (above)."""
    method = get_linear_method("int8")
    w = weights[1]
    params = method.pack(w, torch.randn(w.shape[0]), torch.float32)
    assert method.kernel_takes_large_batches(params) == cpu_variant.startswith("avx512")
    x = torch.randn(rows, w.shape[1])
    y, ref = method.apply(x, params), native_reference_apply(x, params)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_weight_bytes_are_a_quarter_of_fp32(weights):
    method = get_linear_method("int8")
    w = weights[0]
    params = method.pack(w, None, torch.float32)
    assert method.weight_bytes(params) < w.numel() * 4 / 3.9


def test_panels_hold_16_rows_codes_per_input(weights):
    """Panel p, input k: the codes of rows 16p..16p+15 at k, in order; and back."""
    from ember.kernels.linear.int8 import codes, to_panels
    q, _ = quantize_int8(weights[0])
    panels = to_panels(q)
    assert panels.shape == (960 // 16, 576, 16)
    assert torch.equal(panels[3, 100], q[48:64, 100])
    assert torch.equal(codes({"panels": panels}), q)


@needs_native
def test_output_sizes_off_the_panel_width_keep_rows(weights, cpu_variant):
    method = get_linear_method("int8")
    w = weights[0][:40]  # 40 rows: not a multiple of 16
    params = method.pack(w, None, torch.float32)
    assert "qweight" in params and "panels" not in params
    x = torch.randn(6, w.shape[1])
    torch.testing.assert_close(method.apply(x, params), native_reference_apply(x, params), rtol=1e-5, atol=1e-4)
