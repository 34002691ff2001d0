"""KV codecs without a model: round trips, bit-exact contents against independent encoders
(ml_dtypes for fp8), growth of a block's fp8 scale, the fused step's C store held to the
codecs' PyTorch `write` bit for bit, and its paged attention to softmax over the codecs' `read`.
KIVI's own tests are in test_kivi.py."""

from __future__ import annotations

import ctypes

import ml_dtypes
import numpy as np
import pytest
import torch

from ember.kernels import native
from ember.kv.cache import PagedKVCache
from ember.kv.codecs import KV_CODECS, get_kv_codec
from ember.kv.codecs.fp8 import pow2_scale

BS, HKV, D = 4, 2, 32
CODECS = ["auto", "fp32", "bf16", "fp8-e4m3", "fp8-e5m2", "int8"]
ML_DTYPES = {"fp8-e4m3": ml_dtypes.float8_e4m3fn, "fp8-e5m2": ml_dtypes.float8_e5m2}
needs_native = pytest.mark.skipif(not native.available(), reason="the C kernels need a C compiler and AVX2")


def _rows(n: int, seed: int, spread: float = 3.0, d: int = D) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, HKV, d, generator=g) * spread


NATIVE = ["fp32", "bf16", "fp8-e4m3", "fp8-e5m2", "int8", "bfp4", "bfp8", "bfp4-g64", "bfp8-g64"]
# The head width the C tests give each codec: two exponent groups a head for the 64-channel bfp codecs.
NATIVE_D = {"bfp4-g64": 128, "bfp8-g64": 128}


def test_every_codec_is_registered_and_sized():
    assert set(CODECS) <= set(KV_CODECS.names())
    sizes = {name: get_kv_codec(name, BS, HKV, D, torch.float32).bytes_per_block() for name in CODECS}
    values = BS * HKV * D * 2  # K and V
    assert sizes["fp32"] == sizes["auto"] == 4 * values and sizes["bf16"] == 2 * values
    assert sizes["fp8-e4m3"] == sizes["fp8-e5m2"] == values + 2 * HKV * 4  # a scale per block and head
    assert sizes["int8"] == values + 2 * BS * HKV * 4  # a scale per token and head
    assert get_kv_codec("auto", BS, HKV, D, torch.bfloat16).bytes_per_block() == sizes["bf16"]
    with pytest.raises(ValueError, match="unknown KV cache dtype 'fp7'"):
        get_kv_codec("fp7", BS, HKV, D, torch.float32)


@pytest.mark.parametrize("name", CODECS)
def test_round_trip_error(name):
    cache = PagedKVCache.create(1, 8, BS, HKV, D, kv_cache_dtype=name)
    k, v = _rows(3 * BS, 1), _rows(3 * BS, 2)
    slots = torch.tensor([b * BS + o for b in (5, 1, 6) for o in range(BS)])
    cache.write(0, slots, k, v)
    got_k, got_v = cache.gather(0, torch.tensor([5, 1, 6]), 3 * BS)
    assert got_k.dtype == torch.float32 and got_k.shape == k.shape
    rel = {"auto": 0, "fp32": 0, "bf16": 2 ** -8, "int8": 1 / 254, "fp8-e4m3": 2 ** -4, "fp8-e5m2": 2 ** -3}[name]
    for got, want in ((got_k, k), (got_v, v)):
        # relative to each head row's largest value for int8, to each value for the floats (fp8 normals)
        bound = want.abs().amax(-1, keepdim=True) if name == "int8" else want.abs()
        assert bool(((got - want).abs() <= rel * bound + 1e-6 * (name.startswith("fp8"))).all()), name
        if name not in ("auto", "fp32"):
            assert not torch.equal(got, want)  # it really is compressed


@pytest.mark.parametrize("name", ["fp8-e4m3", "fp8-e5m2"])
def test_fp8_contents_equal_ml_dtypes_bit_for_bit(name):
    """Each block's scale is the smallest power of two that fits its rows into the format, and
    the codes are ml_dtypes' round-to-nearest-even of x / scale."""
    codec = get_kv_codec(name, BS, HKV, D, torch.float32)
    cache = PagedKVCache(codec, 1, 4)
    k = _rows(BS, 3)
    k[:, 1] *= 1e-3  # head 1 gets a much smaller scale than head 0
    cache.write(0, torch.arange(BS, 2 * BS), k, k)
    scale = cache.layers[0]["k_scale"][1]
    amax = k.abs().amax(dim=(0, 2))
    assert bool((amax / scale <= codec.fmax).all()) and bool((amax / scale > codec.fmax / 2).all())
    assert torch.equal(scale, torch.exp2(torch.log2(scale).round()))  # powers of two
    want = (k / scale[None, :, None]).numpy().astype(ML_DTYPES[name]).view(np.uint8)
    assert np.array_equal(cache.layers[0]["k"][1].numpy(), want)


@pytest.mark.parametrize("name", ["fp8-e4m3", "fp8-e5m2"])
def test_fp8_scale_grows_and_rewrites_the_block(name):
    """Rows written one at a time, each larger than the last, end as one write of all of them
    would (values kept clear of the subnormals, where re-encoding could round twice); a write
    at offset 0 starts the block afresh."""
    g = torch.Generator().manual_seed(4)
    k = (torch.rand(BS, HKV, D, generator=g) + 1) * torch.tensor([1.0, 3.0, 50.0, 700.0])[:, None, None]
    at_once, one_by_one = (PagedKVCache.create(1, 2, BS, HKV, D, kv_cache_dtype=name) for _ in range(2))
    at_once.write(0, torch.arange(BS), k, k)
    scales = []
    for t in range(BS):
        one_by_one.write(0, torch.tensor([t]), k[t:t + 1], k[t:t + 1])
        scales.append(one_by_one.layers[0]["k_scale"][0].clone())
    assert scales[0][0] < scales[-1][0], "the scale was meant to grow"
    for name_ in ("k", "v", "k_scale", "v_scale"):
        assert torch.equal(one_by_one.layers[0][name_], at_once.layers[0][name_]), name_
    one_by_one.write(0, torch.tensor([0]), k[:1], k[:1])  # the block is reused: its scale restarts
    assert torch.equal(one_by_one.layers[0]["k_scale"][0], scales[0])


def test_int8_contents_equal_a_reference_encoder():
    cache = PagedKVCache.create(1, 4, BS, HKV, D, kv_cache_dtype="int8")
    k = _rows(BS + 2, 5)
    k[2] = 0  # an all-zero row: scale 0, codes 0
    slots = torch.arange(BS - 1, 2 * BS + 1)
    cache.write(0, slots, k, k)
    scale = cache.layers[0]["k_scale"].view(-1, HKV)[slots]
    want_scale = k.abs().amax(-1) / 127
    assert torch.equal(scale, want_scale)
    codes = cache.layers[0]["k"].view(-1, HKV, D)[slots]
    want = np.clip(np.rint(k.numpy() / np.where(want_scale.numpy() > 0, want_scale.numpy(), 1)[..., None]), -127, 127)
    assert np.array_equal(codes.numpy(), want.astype(np.int8))


@pytest.mark.parametrize("name", CODECS)
def test_copy_blocks_moves_every_tensor(name):
    cache = PagedKVCache.create(2, 4, BS, HKV, D, kv_cache_dtype=name)
    for layer in range(2):
        cache.write(layer, torch.arange(BS), _rows(BS, layer), _rows(BS, layer + 7))
    cache.copy_blocks([(0, 3)])
    for layer in range(2):
        for key, t in cache.layers[layer].items():
            assert torch.equal(t[3], t[0]), (layer, key)
        a, b = cache.gather(layer, torch.tensor([0]), BS), cache.gather(layer, torch.tensor([3]), BS)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@needs_native
@pytest.mark.parametrize("name", NATIVE)
def test_c_store_equals_the_codec_write(name, cpu_variant):
    """The fused step's store (csrc/attention_paged.h), called on its own, leaves the same bytes
    as the codec's PyTorch write: whole blocks, partial runs across a block boundary, a growing
    fp8 scale, and a block reused from offset 0."""
    from ember.models.llama_native import _STRUCTS

    lib = native.load("llama_decode")
    abi = native.check_abi(lib, "ember_llama_decode_abi", _STRUCTS)
    d = NATIVE_D.get(name, D)
    codec = get_kv_codec(name, BS, HKV, d, torch.float32)
    layout, _table = native.kv_layout(codec, abi["kv_kinds"])
    py, c = PagedKVCache(codec, 1, 6), PagedKVCache(codec, 1, 6)
    layer = native.kv_layer(c.layers[0])
    writes = [([8, 9, 10], 1.0), ([11, 12], 40.0), ([13], 0.01), ([20, 21, 22, 23], 5.0), ([8, 9], 2.0)]
    for i, (slots, spread) in enumerate(writes):
        k, v = _rows(len(slots), 10 + i, spread, d), _rows(len(slots), 20 + i, spread, d)
        s = torch.tensor(slots, dtype=torch.int64)
        py.write(0, s, k, v)
        p = ctypes.c_void_p
        lib.ember_kv_store(ctypes.byref(layout), ctypes.byref(layer), p(s.data_ptr()), ctypes.c_long(len(slots)),
                           p(k.data_ptr()), p(v.data_ptr()), ctypes.c_long(HKV * d))
        for key in py.layers[0]:
            assert torch.equal(py.layers[0][key], c.layers[0][key]), (name, i, key)


def test_pow2_scale():
    amax = torch.tensor([0.0, 448.0, 449.0, 1.0, 896.0])
    assert pow2_scale(amax, 448.0).tolist() == [0.0, 1.0, 2.0, 2.0 ** -8, 2.0]


@needs_native
@pytest.mark.parametrize("name", NATIVE)
def test_c_attention_equals_softmax_over_the_codec_read(name, cpu_variant):
    """The fused step's paged attention on its own (csrc/llama_decode.c's ember_kv_attend): 1..3
    query heads per KV head over a scattered block table, contexts ending mid-block and on a
    block's end, equal softmax attention over what the codec's `read` returns (fp32 model)."""
    from ember.models.llama_native import _STRUCTS

    lib = native.load("llama_decode")
    abi = native.check_abi(lib, "ember_llama_decode_abi", _STRUCTS)
    d = NATIVE_D.get(name, D)
    codec = get_kv_codec(name, BS, HKV, d, torch.float32)
    layout, _table = native.kv_layout(codec, abi["kv_kinds"])
    cache = PagedKVCache(codec, 1, 6)
    layer = native.kv_layer(cache.layers[0])
    table = torch.tensor([4, 1, 5, 0], dtype=torch.int64)
    n_max = 4 * BS - 1
    slots = (table[:, None] * BS + torch.arange(BS)).flatten()[:n_max]
    cache.write(0, slots, _rows(n_max, 60, d=d), _rows(n_max, 61, d=d))
    p = ctypes.c_void_p
    for n in (1, BS - 1, BS, 2 * BS + 1, n_max):
        keys, values = cache.gather(0, table, n)
        for group in (1, 2, 3):
            q = torch.randn(group * HKV, d, generator=torch.Generator().manual_seed(n * 10 + group))
            kr, vr = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
            want = torch.einsum("ht,thd->hd", torch.softmax(torch.einsum("hd,thd->ht", q, kr) * d ** -0.5, -1), vr)
            out = torch.empty_like(q)
            lib.ember_kv_attend(ctypes.byref(layout), ctypes.byref(layer), p(q.data_ptr()), ctypes.c_long(group * HKV),
                                p(table.data_ptr()), ctypes.c_long(n), ctypes.c_float(d ** -0.5), p(out.data_ptr()))
            torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-4, msg=f"{name} n={n} group={group}")
