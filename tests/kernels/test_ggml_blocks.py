"""Raw GGML blocks (Q4_0/Q4_1/Q8_0): decoding against the `gguf` package, row operations, and
int4's repack of 4-bit blocks without a float step, held to the plain-torch reference."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from ember.kernels import native
from ember.kernels.linear import get_linear_method
from ember.kernels.linear.ggml_blocks import GGMLBlocks, cat_rows
from ember.kernels.linear.int4 import Int4Linear, dequantize_int4, reference_apply

QT = gguf.GGMLQuantizationType
needs_native = pytest.mark.skipif(not native.available(), reason="the C kernels need a C compiler and AVX2")


def blocks_of(weight: torch.Tensor, qtype: str) -> GGMLBlocks:
    data = gguf.quants.quantize(weight.numpy().astype(np.float32), QT[qtype])
    return GGMLBlocks(qtype, torch.from_numpy(np.ascontiguousarray(data)), weight.shape[1])


def random_weight(rows: int = 48, cols: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[3, 32:64] = 0.0  # an all-zero block
    w[5, :32] += 0.3  # a block far from zero: Q4_1's minimum matters
    return w


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_blocks_decode_as_the_gguf_package_does(qtype):
    b = blocks_of(random_weight(), qtype)
    ref = gguf.quants.dequantize(b.data.numpy(), QT[qtype]).reshape(48, 128)
    assert b.shape == (48, 128)
    assert torch.equal(b.dequantize(), torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32)))


def test_row_operations_on_blocks_match_the_float_ones():
    a, b, c = blocks_of(random_weight(seed=1), "Q4_1"), blocks_of(random_weight(seed=2), "Q4_1"), blocks_of(random_weight(seed=3), "Q8_0")
    order = torch.randperm(48, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.permute_rows(order).dequantize(), a.dequantize()[order])
    fused = cat_rows([a, b])
    assert isinstance(fused, GGMLBlocks) and torch.equal(fused.dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    mixed = cat_rows([a, c, torch.ones(2, 128)])  # mixed layouts: one float matrix
    assert isinstance(mixed, torch.Tensor) and mixed.shape == (98, 128)
    assert torch.equal(mixed[48:96], c.dequantize())


def test_malformed_blocks_are_refused():
    with pytest.raises(ValueError, match="Q6_K"):
        GGMLBlocks("Q6_K", torch.zeros(4, 210, dtype=torch.uint8), 256)
    with pytest.raises(ValueError, match="does not hold"):
        GGMLBlocks("Q4_1", torch.zeros(4, 18, dtype=torch.uint8), 32)


@needs_native
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1"])
def test_int4_repacks_4bit_blocks_exactly(qtype):
    """Codes and fp16 scales are moved, not recomputed: the packed weight is the stored one, bit
    for bit, and the kernel holds to the reference on it."""
    b = blocks_of(random_weight(), qtype)
    method = Int4Linear()
    params = method.load(b, torch.randn(48), torch.float32)
    assert "block_codes" in params
    assert torch.equal(dequantize_int4(params), b.dequantize())
    x = torch.randn(5, 128)
    ref = reference_apply(x, params)
    torch.testing.assert_close(method.apply(x, params), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("name", ["dense", "int8", "int4"])
def test_other_layouts_go_through_float(name):
    """Q8_0 blocks are per 32 inputs, int8 is per row: no direct repack, the float weight is packed.
    64 rows: int4's aten packing (where the C kernels are not built) wants a multiple of 32."""
    b = blocks_of(random_weight(rows=64), "Q8_0")
    method = get_linear_method(name)
    direct = method.load(b, None, torch.float32)
    via_float = method.pack(b.dequantize(), None, torch.float32)
    assert direct.keys() == via_float.keys()
    assert all(torch.equal(direct[k], via_float[k]) for k in direct)
