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


@pytest.mark.parametrize("qtype", ["TQ1_0", "TQ2_0"])
def test_ternary_gguf_weights_are_kept_as_stored(qtype):
    """A TQ1_0/TQ2_0 tensor, dequantized (trits times an fp16 d per 256), ternarizes back to
    itself bit for bit: the same trits, d as every group's scale. Absmean alone would shrink
    the scale to d times the share of non-zero trits."""
    import gguf
    import numpy as np
    from gguf.constants import GGMLQuantizationType as QT

    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 512)).astype(np.float32)
    x[0, :256] = 0  # an all-zero block
    stored = gguf.quants.quantize(x, QT[qtype])
    w = torch.from_numpy(np.asarray(gguf.quants.dequantize(stored, QT[qtype]), dtype=np.float32).reshape(x.shape))
    codes, gamma, minimum = ternarize(w)
    back = (codes.float().view(16, -1, 64) * gamma.float()[..., None] + minimum.float()[..., None]).view_as(w)
    assert torch.equal(back, w)
    assert (w != 0).float().mean() < 0.9  # zeros present: absmean's gamma would differ from d


def test_auto_keeps_ternary_files_ternary():
    from ember.kernels.linear.auto import choose_linear

    assert choose_linear("gguf", ["TQ2_0"]).value == "ternary"
    assert choose_linear("gguf", ["TQ1_0", "TQ2_0"]).value == "ternary"
    # llama.cpp writes rows TQ can't hold (not a multiple of 256 wide) in another type: no fewer bits
    assert choose_linear("gguf", ["TQ2_0", "Q4_0"]).value == "int4"
    assert choose_linear("gguf", ["TQ2_0", "Q8_0"]).value == "int8"
