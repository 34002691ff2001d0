"""`int4` LinearMethod: packing, the aten kernel against the plain-torch reference, quantization error."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ember.kernels import native
from tests.conftest import force_cpu_variant
from ember.kernels.linear import get_linear_method
from ember.kernels.linear.q8 import quantize_q8
from ember.kernels.linear.int4 import (ATEN_CENTRE, GROUP, KERNEL_DTYPE, Int4Linear, codes_through_kernel,
                                       dequantize_int4, pack_blocks, quantize_int4, reference_apply, unpack_blocks,
                                       unpack_int4)

needs_native = pytest.mark.skipif(not native.available(), reason="the C kernels need a C compiler and AVX2")
# Both packings: the C kernels' (where they build) and aten's fallback.
PACKINGS = [pytest.param(True, id="c-kernel", marks=needs_native), pytest.param(False, id="aten")]
# The products against their references: the C kernel under each CPU variant, and aten's.
KERNELS = [pytest.param(v, id=f"c-kernel-{v}", marks=needs_native) for v in native.VARIANTS] + \
    [pytest.param(None, id="aten")]


@pytest.fixture(scope="module")
def weights(ember_lm):
    """Real projections of the default model (Q4_1 in the GGUF): fused QKV [960, 576], down [576, 1536]."""
    layer = ember_lm.model.layers[3]
    return [layer.qkv_proj.params["weight"], layer.down_proj.params["weight"]]


def aten_grid(w: torch.Tensor) -> torch.Tensor:
    """Plain torch, before any packing: the weight the aten packing of w stands for."""
    n, k = w.shape
    q, scale, zero = quantize_int4(w, dtype=KERNEL_DTYPE, centre=ATEN_CENTRE)
    return ((q.float().view(n, -1, GROUP) - ATEN_CENTRE) * scale.float()[..., None]
            + zero.float()[..., None]).view(n, k)


# 96 rows: on AVX-512 torch packs a block of 64 rows and a tail of 32, on AVX2 three blocks of 32.
@pytest.mark.parametrize("n, k", [(32, 64), (96, 64), (960, 576), (576, 1536)])
def test_unpack_reads_the_codes_the_kernel_multiplies_by(n, k):
    """torch lays the packed codes out by CPU variant; whatever it chose here, the codes
    `unpack_int4` reads are the ones the aten kernel computes with (the identity through it)
    and the ones given to the packer."""
    torch.manual_seed(n + k)
    q = torch.randint(0, 16, (n, k), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    assert torch.equal(codes_through_kernel(packed, n, k), q)
    assert torch.equal(unpack_int4(packed, n, k), q)


def test_the_aten_packing_dequantizes_to_the_grid_it_was_given(weights):
    method = Int4Linear(use_native=False)
    for w in weights:
        params = method.pack(w, None, torch.float32)
        assert "qweight" in params
        assert torch.equal(dequantize_int4(params), aten_grid(w))
        assert torch.equal(method.dequantize(params, torch.bfloat16), aten_grid(w).bfloat16())


# The aten path in a fresh interpreter per CPU variant (torch reads ATEN_CPU_CAPABILITY once, at
# import), held to plain torch: a layout torch changes on any variant fails here, not only on
# the variant the test machine happens to run.
ATEN_CHILD = r"""
import sys
import torch
import torch.nn.functional as F
from ember.kernels.linear.int4 import (ATEN_CENTRE, GROUP, KERNEL_DTYPE, Int4Linear, codes_through_kernel,
                                       dequantize_int4, quantize_int4, unpack_int4)
got = torch.backends.cpu.get_cpu_capability()
assert got == sys.argv[1].upper(), f"asked torch for {sys.argv[1]}, it runs {got}"
torch.manual_seed(0)
n, k = 96, 64
w, bias = torch.randn(n, k), torch.randn(n)
q, scale, zero = quantize_int4(w, dtype=KERNEL_DTYPE, centre=ATEN_CENTRE)
grid = ((q.float().view(n, -1, GROUP) - ATEN_CENTRE) * scale.float()[..., None] + zero.float()[..., None]).view(n, k)
method = Int4Linear(use_native=False)
params = method.pack(w, bias, torch.float32)
assert torch.equal(codes_through_kernel(params["qweight"], n, k), q), "the kernel multiplies by other codes"
assert torch.equal(unpack_int4(params["qweight"], n, k), q), "unpack_int4 misreads the packing"
assert torch.equal(dequantize_int4(params), grid), "dequantize_int4 is off the grid"
for rows in (3, method.dense_rows + 1):  # the aten kernel; the dense GEMM on the dequantized weight
    x = torch.randn(rows, k)
    y = method.apply(x, params)
    if rows < method.dense_rows:  # bf16 activations, the output rounded to bf16 before the bias
        product = F.linear(x.to(KERNEL_DTYPE).float(), grid).abs()
        err = (y - F.linear(x.to(KERNEL_DTYPE).float(), grid, bias)).abs()
        assert bool((err <= product * 2 ** -8 + 1e-4 * product.max()).all()), f"{rows} rows: off by {err.max()}"
    else:
        torch.testing.assert_close(y, F.linear(x, grid, bias), rtol=1e-5, atol=1e-5)
print("ok", got)
"""


def cpu_variant_supported(variant: str) -> bool:
    if variant == "default":
        return True
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    probe = getattr(torch.cpu, f"_is_{variant}_supported", None)
    return bool(probe and probe())


@pytest.mark.parametrize("variant", ["default", "avx2", "avx512"])
def test_the_aten_path_holds_on_every_cpu_variant(variant):
    if not cpu_variant_supported(variant):
        pytest.skip(f"this CPU has no {variant}")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, ATEN_CPU_CAPABILITY=variant, PYTHONPATH=path)
    r = subprocess.run([sys.executable, "-c", ATEN_CHILD, variant], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=600)  # a guard against a hang, not a speed check
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ok {variant.upper()}" in r.stdout


def test_block_packing_round_trips_and_puts_4_codes_of_8_rows_per_quad():
    torch.manual_seed(0)
    q = torch.randint(0, 16, (48, 96), dtype=torch.int32)
    scale, minimum = torch.rand(48, 3).half(), torch.randn(48, 3).half()
    codes, sm = pack_blocks(q, scale, minimum)
    assert codes.shape == (6, 3, 4, 32) and codes.dtype == torch.uint8 and sm.shape == (6, 3, 2, 8)
    q2, s2, m2 = unpack_blocks(codes, sm)
    assert torch.equal(q2, q) and torch.equal(s2, scale) and torch.equal(m2, minimum)
    # Block 1 (rows 8-15), group 2, quad pair 3, byte 4r + t: row 8 + r, inputs 64 + 24 + t (low
    # nibble) and 64 + 28 + t (high nibble).
    r, t = 5, 2
    assert int(codes[1, 2, 3, 4 * r + t]) == int(q[13, 90]) | int(q[13, 94]) << 4
    assert torch.equal(sm[1, 2, :, r], torch.stack([scale[13, 2], minimum[13, 2]]))


def test_shapes_the_kernel_cannot_take_are_refused():
    with pytest.raises(ValueError, match="multiple of the group size"):
        quantize_int4(torch.randn(64, 48))
    with pytest.raises(ValueError, match="multiple of 32"):
        Int4Linear(use_native=False).pack(torch.randn(48, 64), None, torch.float32)
    # The C kernel's blocks of 8 rows: other output sizes take the aten packing (which wants 32).
    with pytest.raises(ValueError, match="multiple of 32"):
        Int4Linear(use_native=True).pack(torch.randn(44, 64), None, torch.float32)


@pytest.mark.parametrize("dtype, centre, eps", [(torch.float16, 0, 2 ** -11), (torch.bfloat16, 8, 2 ** -8)],
                         ids=["c-kernel-grid", "aten-grid"])
def test_quantization_error_random_weights(dtype, centre, eps):
    torch.manual_seed(1)
    w = torch.randn(256, 512)
    q, scale, offset = quantize_int4(w, dtype=dtype, centre=centre)
    assert int(q.min()) >= 0 and int(q.max()) <= 15 and scale.dtype == offset.dtype == dtype
    deq = ((q.float().view(256, -1, GROUP) - centre) * scale.float()[..., None]
           + offset.float()[..., None]).view(256, 512)
    step = scale.float().repeat_interleave(GROUP, dim=1)
    # Half a step from rounding, plus the rounding of the offset to its dtype.
    slack = offset.float().abs().repeat_interleave(GROUP, dim=1) * eps + 1e-6
    assert bool(((deq - w).abs() <= step * 0.5 + slack).all())
    assert (deq - w).norm() / w.norm() < 0.12  # ~0.09 expected for 16 levels over a Gaussian group


def test_gguf_q4_1_weights_requantize_onto_their_own_grid(weights):
    """Q4_1 blocks are 32 wide, like our groups, with the same fp16 (scale, minimum): a float
    copy of them requantizes to within fp16 rounding of itself."""
    for w in weights:
        q, scale, minimum = quantize_int4(w)
        deq = (q.float().view(w.shape[0], -1, GROUP) * scale.float()[..., None] + minimum.float()[..., None]).view_as(w)
        rel = (deq - w).norm() / w.norm()
        assert rel < 1e-3, f"relative error {rel:.5f} (random Gaussian weights give ~0.09)"


@pytest.mark.parametrize("variant", KERNELS)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 9, 32])
def test_kernel_matches_reference(weights, rows, variant, monkeypatch):
    use_native = variant is not None
    if use_native:
        force_cpu_variant(monkeypatch, variant)
    method = Int4Linear(use_native=use_native)
    torch.manual_seed(rows)
    for w in weights:
        bias = torch.randn(w.shape[0])
        params = method.pack(w, bias, torch.float32)
        assert ("block_codes" in params) == use_native
        x = torch.randn(rows, w.shape[1])
        y, ref = method.apply(x, params), reference_apply(x, params)
        assert y.shape == (rows, w.shape[0]) and y.dtype == torch.float32
        if use_native:  # the same products as the reference (int8 activations), summed in another order
            torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
        else:  # the aten kernel also rounds its output (before the bias) to bf16
            product = (ref - bias).abs()
            assert bool(((y - ref).abs() <= product * 2 ** -8 + 1e-4 * product.max()).all())
        exact = F.linear(x, w, bias)
        assert (y - exact).norm() / exact.norm() < 0.05


@pytest.mark.parametrize("variant", KERNELS[:-1])
@pytest.mark.parametrize("rows", [1, 5, 8, 9, 33])
def test_an_odd_number_of_blocks(rows, variant, monkeypatch):
    """40 rows, 5 blocks of 8: the AVX-512 loop takes blocks in pairs, the last one alone
    (the 8-row loop); every AVX-512 row tile (1-8 rows) against the same reference."""
    force_cpu_variant(monkeypatch, variant)
    method = Int4Linear(use_native=True)
    torch.manual_seed(40 + rows)
    w, bias = torch.randn(40, 96), torch.randn(40)
    params = method.pack(w, bias, torch.float32)
    x = torch.randn(rows, 96)
    y, ref = method.apply(x, params), reference_apply(x, params)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@needs_native
def test_both_packings_hold_about_the_same_weight(weights):
    """The two grids differ only in how the offset is rounded (fp16 minimum, bf16 zero)."""
    w = weights[0]
    mine = dequantize_int4(Int4Linear(use_native=True).pack(w, None, torch.float32))
    aten = dequantize_int4(Int4Linear(use_native=False).pack(w, None, torch.float32))
    assert (mine - w).norm() / w.norm() < 1e-3
    assert (aten - w).norm() / w.norm() < 0.02


@pytest.mark.parametrize("variant", KERNELS)
def test_large_batches_take_the_c_kernel_or_the_dense_path(weights, variant, monkeypatch):
    use_native = variant is not None
    if use_native:
        force_cpu_variant(monkeypatch, variant)
    method = Int4Linear(use_native=use_native)
    w = weights[1]
    params = method.pack(w, None, torch.float32)
    x = torch.randn(method.dense_rows + 5, w.shape[1])
    if use_native:  # integer dots on int8 activations at every batch size
        ref = reference_apply(x, params)
        torch.testing.assert_close(method.apply(x, params), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    else:
        torch.testing.assert_close(method.apply(x, params), F.linear(x, aten_grid(w)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_native", PACKINGS)
def test_weight_bytes_are_about_an_eighth_of_fp32(weights, use_native):
    method = Int4Linear(use_native=use_native)
    w = weights[0]
    params = method.pack(w, None, torch.float32)
    assert method.weight_bytes(params) < w.numel() * 4 / 6


def test_q8_activations_lose_little_and_handle_zero_groups():
    torch.manual_seed(2)
    x = torch.randn(3, 128) * 4
    x[1, 32:64] = 0  # an all-zero group has scale 0, not NaN
    xq = quantize_q8(x)
    assert bool(torch.isfinite(xq).all()) and bool((xq[1, 32:64] == 0).all())
    step = x.view(3, 4, 32).abs().amax(-1, keepdim=True) / 127
    assert bool(((xq - x).view(3, 4, 32).abs() <= step / 2 + 1e-6).all())  # half a step per element
    assert (xq - x).norm() / x.norm() < 0.01


@needs_native
def test_the_default_models_q4_1_blocks_load_unchanged(ember_lm, ember_lm_int4):
    """The GGUF's Q4_1 projections are repacked, not requantized: int4 holds the very weights
    the dense model dequantized, bit for bit (Q/K unpermuted, QKV and gate/up fused)."""
    for i in (0, 17, 29):
        dense, int4 = ember_lm.model.layers[i], ember_lm_int4.model.layers[i]
        for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
            params = getattr(int4, name).params
            assert "block_codes" in params
            assert torch.equal(dequantize_int4(params), getattr(dense, name).params["weight"]), (i, name)


@pytest.mark.parametrize("variant", list(native.VARIANTS))
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1"])
def test_load_time_repack_equals_the_torch_packing(monkeypatch, variant, qtype):
    """csrc/linear.c's one-pass repack of GGUF Q4 blocks, held to pack_blocks(q4_codes()) byte
    for byte, under every CPU variant this machine runs."""
    import numpy as np

    from ember.kernels.linear.ggml_blocks import BLOCK_BYTES, GGMLBlocks
    from ember.kernels.linear.int4 import pack_blocks, repack_q4

    force_cpu_variant(monkeypatch, variant)
    n, k = 40, 96
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, (n, k // 32, BLOCK_BYTES[qtype]), dtype=np.uint8)
    halves = rng.uniform(-2, 2, (n, k // 32, 2)).astype(np.float16).view(np.uint8)  # finite d and m
    raw[..., :4 if qtype == "Q4_1" else 2] = halves.reshape(n, k // 32, 4)[..., :4 if qtype == "Q4_1" else 2]
    weight = GGMLBlocks(qtype, torch.from_numpy(raw.reshape(n, -1)), k)
    codes, sm = repack_q4(weight)
    want_codes, want_sm = pack_blocks(*weight.q4_codes())
    assert torch.equal(codes, want_codes)
    assert torch.equal(sm.view(torch.int16), want_sm.view(torch.int16))
