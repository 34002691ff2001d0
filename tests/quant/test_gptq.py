"""GPTQ (quant/gptq.py): lower output error than round-to-nearest on the same grid, weights
exactly on the format's grid (the packed storage and the kernel's reference reproduce them),
calibration tokens apart from the scored ones, and a clear error for methods it can't serve."""

from __future__ import annotations

import pytest
import torch

from ember.kernels.linear import get_linear_method
from ember.quant.gptq import UniformGrid, gptq_quantize, grid_for, nearest

METHODS = ["tmac-w2", "tmac-w3", "bcq-w3"]


def correlated_inputs(k: int, rows: int = 1024, seed: int = 0) -> torch.Tensor:
    """Inputs whose channels are strongly correlated and unequally scaled (what makes GPTQ's
    error feedback pay), as activations are."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)
    x = torch.randn(rows, k // 8, generator=g) @ torch.randn(k // 8, k, generator=g)  # low-rank share
    x = x + 0.3 * torch.randn(rows, k, generator=g) @ mix
    return x * torch.linspace(0.2, 3.0, k)[torch.randperm(k, generator=g)]


def _output_error(x, w, wq):
    return float(torch.linalg.norm(x.double() @ (w.double() - wq.double()).t()))


@pytest.mark.parametrize("name", METHODS)
def test_gptq_beats_round_to_nearest_and_lands_on_the_grid(name):
    torch.manual_seed(1)
    method = get_linear_method(name)
    n, k = 64, 256
    w = torch.randn(n, k) * 0.05
    x = correlated_inputs(k)
    h = 2 * x.double().t() @ x.double()
    gptq = method.pack_parts(gptq_quantize(w, h, grid_for(method)), None, torch.float32)
    rtn = method.pack(w, None, torch.float32)
    w_gptq, w_rtn = method.dequantize(gptq, torch.float32), method.dequantize(rtn, torch.float32)
    e_gptq, e_rtn = _output_error(x, w, w_gptq), _output_error(x, w, w_rtn)
    # GPTQ's whole point; measured 0.28-0.32 of round-to-nearest's error here.
    assert e_gptq < 0.6 * e_rtn, (e_gptq, e_rtn)
    # On the grid: the format's storage round-trips the weights, and the kernel's reference
    # (the C kernel's tables and lookups) computes with them.
    again = method.pack_parts(method_parts(method, gptq), None, torch.float32)
    assert all(torch.equal(again[key], gptq[key]) for key in gptq)
    from ember.kernels.linear import planes, tmac
    ref = (tmac if name == "tmac-w2" else planes).reference_apply
    x1 = x[:8]
    y, exact = ref(x1, gptq).double(), (x1 @ w_gptq.t()).double()
    # the tables' int8 steps are the only difference (T-MAC's bound on their NMSE: 5e-4)
    assert float(((y - exact) ** 2).mean() / (exact ** 2).mean()) < 5e-4


def method_parts(method, params):
    """The packed storage back to the parts pack_parts takes."""
    from ember.kernels.linear import planes, tmac
    if "lut_scale_min" in params:
        idx, scale, minimum = tmac.unpack_planes(params)
        return tmac.codes_from_indices(idx), scale, minimum
    idx, scales, minimum = planes.unpack_scaled_planes(params)
    p, n, t = idx.shape
    bits = torch.stack([(idx >> j) & 1 for j in range(4)], dim=-1).view(p, n, 4 * t).to(torch.uint8)
    return bits, scales, minimum


def test_uniform_grid_values_are_round_to_nearest_values():
    """With an identity Hessian and no damping effect, GPTQ is round-to-nearest: same codes."""
    from ember.kernels.linear.tmac_ref import quantize_rtn
    w = torch.randn(32, 128)
    q, scale, minimum = gptq_quantize(w, torch.eye(128), UniformGrid(2), damp=0.0)
    q_rtn, scale_rtn, minimum_rtn = quantize_rtn(w, 2)
    assert torch.equal(scale, scale_rtn) and torch.equal(minimum, minimum_rtn)
    assert (q != q_rtn).float().mean() < 1e-3  # ties at a midpoint may go either way


@pytest.mark.parametrize("pow2", [False, True])
def test_binary_coding_grid_matches_bcq_on_identity_hessian(pow2):
    """With H = I GPTQ has no error to feed forward: its grid is bcq's own fit (-pow2: under
    the power-of-two constraint, every scale one)."""
    from ember.kernels.linear.bcq import bcq_planes
    w = torch.randn(32, 128)
    grid = grid_for(get_linear_method("bcq-w3-pow2" if pow2 else "bcq-w3"))
    planes, scales, minimum = gptq_quantize(w, torch.eye(128), grid, damp=0.0)
    planes_b, scales_b, minimum_b = bcq_planes(w, 3, pow2=pow2)
    assert torch.equal(scales, scales_b) and torch.equal(minimum, minimum_b)
    assert (planes != planes_b).float().mean() < 1e-3
    if pow2:
        assert torch.equal(scales.float(), torch.exp2(torch.log2(scales.float()).round()))


@pytest.mark.parametrize("name", ["int4", "int8", "dense", "ternary", "w4a4"])
def test_gptq_refuses_methods_it_does_not_serve(name):
    with pytest.raises(ValueError, match="gptq applies to tmac-w1..w4 and bcq-w2..w4"):
        grid_for(get_linear_method(name))


class _CharTokenizer:
    def encode(self, text, add_bos=False):
        return [ord(c) % 1000 for c in text]


def test_calibration_tokens_are_never_scored():
    """The calibration windows are the text's tail; a model calibrated on the text has its
    perplexity windows end before them, with or without max_tokens."""
    from types import SimpleNamespace

    from ember.eval.perplexity import calibration_record, calibration_windows, scored_tokens
    text = "".join(chr(97 + i % 26) for i in range(20_000))
    tok = _CharTokenizer()
    windows, start = calibration_windows(tok, text, 2048)
    assert windows.shape == (4, 512) and start == 20_000 - 2048
    assert windows.reshape(-1).tolist() == tok.encode(text)[start:]
    model = SimpleNamespace(calibration=calibration_record(text, start))
    assert scored_tokens(20_000, None, text, model) == start  # the whole text: stops before them
    assert scored_tokens(20_000, 4096, text, model) == 4096
    assert scored_tokens(20_000, None, text + " ", model) == 20_000  # another text: no calibration in it
    assert scored_tokens(20_000, None, text, SimpleNamespace()) == 20_000
    with pytest.raises(ValueError, match="more than half"):
        calibration_windows(tok, text, 12_000)


def test_default_calibration_and_scored_spans_are_disjoint(ember_lm, topics_text):
    """On the real text: the default 8192 calibration tokens begin after the 16k tokens the
    benchmarks score (lowbit.py --ppl-tokens 4096, README figures over 16k)."""
    from ember.config import EngineConfig
    from ember.eval.perplexity import calibration_windows
    _, start = calibration_windows(ember_lm.tokenizer, topics_text, EngineConfig().calibration_tokens)
    assert start > 16_384


def test_config_refuses_gptq_where_it_does_not_apply():
    from ember.config import EngineConfig
    with pytest.raises(ValueError, match="gptq applies to"):
        EngineConfig(linear="int4", quantizer="gptq")
    with pytest.raises(ValueError, match="explicit --linear"):
        EngineConfig(quantizer="gptq")
    with pytest.raises(ValueError, match="rtn, gptq"):
        EngineConfig(linear="tmac-w2", quantizer="awq")
    assert EngineConfig(linear="tmac-w3", quantizer="gptq").calibration_tokens == 8192


def test_range_search_never_fits_a_group_worse_and_gptq_mse_lowers_the_error():
    """gptq-mse: each group's range shrunk where that rounds it closer (shrink 1 is min/max,
    so no group can get worse), and on correlated inputs GPTQ's output error at 2 bits drops."""
    torch.manual_seed(3)
    w = torch.randn(64, 64) * 0.05
    w[:, 0] = 0.5  # an outlier column: a range worth clipping
    plain, searched = UniformGrid(2), UniformGrid(2, search=True)
    vp, _ = plain.fit(w)
    vs, _ = searched.fit(w)
    err = lambda v: ((v.gather(1, torch.stack([nearest(v, w[:, j]) for j in range(64)], 1)) - w) ** 2).sum(1)  # noqa: E731
    assert bool((err(vs) <= err(vp) + 1e-7).all()) and float(err(vs).sum()) < float(err(vp).sum())
    method = get_linear_method("tmac-w2")
    x = correlated_inputs(256)
    wide = torch.randn(64, 256) * 0.05
    h = 2 * x.double().t() @ x.double()
    errors = [_output_error(x, wide, method.dequantize(method.pack_parts(
        gptq_quantize(wide, h, grid_for(method, search)), None, torch.float32), torch.float32)) for search in (False, True)]
    assert errors[1] < errors[0], errors
