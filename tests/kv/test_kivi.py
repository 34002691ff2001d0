"""KIVI codecs (`kivi4`, `kivi2`) without a model: the cache reads back what the plain PyTorch
reference quantizer gives, partial blocks keep their keys exactly, error bounds per bit width,
contents independent of how writes were split, and the fused step's C store and in-register
attention held to the codec (every CPU variant this machine runs)."""

from __future__ import annotations

import ctypes
import math

import pytest
import torch

from ember.kernels import native
from ember.kv.cache import PagedKVCache
from ember.kv.codecs import get_kv_codec
from ember.kv.codecs.kivi import decode_keys, decode_values, encode_keys, encode_values, pack, quantize, unpack

BS, HKV, D = 4, 2, 64
G = 32  # value group (channels)
KIVI = ["kivi4", "kivi2", "kivi4-fp16", "kivi2-fp16", "kivi4-fp16-v64"]
BITS = {"kivi4": 4, "kivi2": 2, "kivi4-fp16": 4, "kivi2-fp16": 2, "kivi4-fp16-v64": 4}
STATS = {name: torch.float16 if "-fp16" in name else torch.float32 for name in KIVI}  # scales, minimums
VG = {name: 64 if name.endswith("-v64") else G for name in KIVI}  # value group
needs_native = pytest.mark.skipif(not native.available(), reason="the C kernels need a C compiler and AVX2")


def _rows(n: int, seed: int, spread: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # a per-channel offset and scale, like real keys (outlier channels are what KIVI is for)
    chan = torch.randn(HKV, D, generator=g) * spread
    return torch.randn(n, HKV, D, generator=g) * (1 + chan.abs()) + chan


def test_pack_unpack_and_quantize_by_hand():
    for bits in (2, 4):
        codes = torch.randint(0, 1 << bits, (3, 5, 16))
        assert torch.equal(unpack(pack(codes, bits), bits).long(), codes)
    assert pack(torch.tensor([[1, 2, 3, 15, 0, 7, 8, 9]]), 4).tolist() == [[0x21, 0xF3, 0x70, 0x98]]
    assert pack(torch.tensor([[1, 2, 3, 0, 3, 3, 3, 3]]), 2).tolist() == [[0b00111001, 0xFF]]
    x = torch.tensor([[-1.0, 0.0, 0.5, 2.0], [3.0, 3.0, 3.0, 3.0]])
    codes, scale, mn = quantize(x, -1, 2)  # scale (2 - -1) / 3 = 1: codes -1 -> 0, 0 -> 1, .5 -> 2 (tie to even), 2 -> 3
    assert codes.tolist() == [[0, 1, 2, 3], [0, 0, 0, 0]] and scale.tolist() == [1.0, 0.0] and mn.tolist() == [-1.0, 3.0]


def test_sizes():
    for name, bits in BITS.items():
        codec = get_kv_codec(name, BS, HKV, D, torch.float32)
        codes = BS * HKV * D * bits // 8
        # the residual is no part of a block: it lives in the scratch pool, a slot per open block
        stat = STATS[name].itemsize
        want = 2 * codes + 2 * HKV * D * stat + 2 * BS * HKV * (D // VG[name]) * stat + 1
        assert codec.bytes_per_block() == want
        assert codec.bytes_per_scratch_slot() == BS * HKV * D * 4
        bf16 = get_kv_codec(name, BS, HKV, D, torch.bfloat16)
        assert bf16.bytes_per_block() == want and bf16.bytes_per_scratch_slot() == BS * HKV * D * 2


@pytest.mark.parametrize("name", KIVI)
def test_read_equals_the_reference(name):
    """Three full blocks (in a scattered block table) and a partial fourth: full blocks read as
    the reference's dequantization (keys per channel over the block, values per token); the
    partial block's keys are exactly what was written."""
    bits = BITS[name]
    cache = PagedKVCache.create(1, 8, BS, HKV, D, kv_cache_dtype=name)
    n = 3 * BS + 2
    k, v = _rows(n, 1), _rows(n, 2)
    table = torch.tensor([5, 1, 6, 3])
    slots = (table[:, None] * BS + torch.arange(BS)).flatten()[:n]
    cache.write(0, slots, k, v)
    got_k, got_v = cache.gather(0, table, n)
    full = 3 * BS
    st = STATS[name]
    want_k = torch.cat([decode_keys(*encode_keys(k[b * BS:(b + 1) * BS], bits, st), bits) for b in range(3)] + [k[full:]])
    want_v = decode_values(*encode_values(v, bits, st, VG[name]), bits)
    assert cache.layers[0]["v_scale"].shape[-1] == D // VG[name]
    assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
    assert torch.equal(got_k[full:], k[full:])  # the residual: exact
    assert not torch.equal(got_k[:full], k[:full])  # it really is quantized
    assert cache.layers[0]["k_full"][table].flatten().tolist() == [1, 1, 1, 0]


@pytest.mark.parametrize("name", ["kivi4", "kivi2"])
def test_error_bounds(name):
    """Every value within half a step of its group's grid, step = range / (2^bits - 1): keys'
    groups are (block, head, channel), values' are (token, head, 32 channels). Each group's
    min and max come back (near) exactly. (fp16 statistics: test_fp16_statistics.)"""
    bits, qmax = BITS[name], (1 << BITS[name]) - 1
    cache = PagedKVCache.create(1, 4, BS, HKV, D, kv_cache_dtype=name)
    k, v = _rows(4 * BS, 3), _rows(4 * BS, 4)
    cache.write(0, torch.arange(4 * BS), k, v)
    got_k, got_v = cache.gather(0, torch.arange(4), 4 * BS)
    kb, gb = k.view(4, BS, HKV, D), got_k.view(4, BS, HKV, D)
    k_step = (kb.amax(1) - kb.amin(1)) / qmax  # [4, Hkv, D]
    assert bool(((gb - kb).abs() <= k_step[:, None] / 2 * (1 + 1e-5) + 1e-6).all())
    vg, got_vg = v.view(-1, HKV, D // G, G), got_v.view(-1, HKV, D // G, G)
    v_step = (vg.amax(-1) - vg.amin(-1)) / qmax  # [T, Hkv, D/G]
    assert bool(((got_vg - vg).abs() <= v_step[..., None] / 2 * (1 + 1e-5) + 1e-6).all())
    for got, want, dim in ((gb, kb, 1), (got_vg, vg, -1)):
        assert torch.allclose(got.amax(dim), want.amax(dim), atol=1e-5, rtol=1e-6)
        assert torch.allclose(got.amin(dim), want.amin(dim), atol=1e-5, rtol=1e-6)
    # the mean key error in steps: a uniform rounding error averages 1/4 step, and each
    # group's min and max (2 of its BS tokens) are exact
    rel = float(((gb - kb).abs() / k_step[:, None].clamp_min(1e-12)).mean())
    expected = 0.25 * (BS - 2) / BS
    assert 0.6 * expected < rel < 1.5 * expected, rel


@pytest.mark.parametrize("bits", [4, 2])
def test_fp16_statistics(bits):
    """kivi4-fp16/kivi2-fp16 store scales and minimums in fp16, rounded before the codes are
    computed from them: each value lands within half a step plus the statistics' fp16 rounding
    (2^-11 relative) of what it was, and codes are those of the rounded grid."""
    name = f"kivi{bits}-fp16"
    cache = PagedKVCache.create(1, 4, BS, HKV, D, kv_cache_dtype=name)
    assert cache.layers[0]["k_scale"].dtype == cache.layers[0]["v_min"].dtype == torch.float16
    k, v = _rows(4 * BS, 3), _rows(4 * BS, 4)
    cache.write(0, torch.arange(4 * BS), k, v)
    got_k, got_v = cache.gather(0, torch.arange(4), 4 * BS)
    qmax = (1 << bits) - 1
    for got, x, dim in ((got_k.view(4, BS, HKV, D), k.view(4, BS, HKV, D), 1),
                        (got_v.view(-1, HKV, D // G, G), v.view(-1, HKV, D // G, G), -1)):
        step = (x.amax(dim) - x.amin(dim)) / qmax
        slack = 2.0 ** -11 * (x.amin(dim).abs() + x.amax(dim).abs() + qmax * step) + 1e-6
        assert bool(((got - x).abs() <= (step / 2 * (1 + 1e-3) + slack).unsqueeze(dim)).all())
    codes, scale, mn = quantize(v.view(-1, HKV, D // G, G), -1, bits, torch.float16)
    assert torch.equal(scale, scale.half().float()) and torch.equal(mn, mn.half().float())


@pytest.mark.parametrize("name", KIVI)
def test_contents_do_not_depend_on_how_writes_were_split(name):
    """Token by token, whole blocks at once, and uneven runs across block boundaries leave the
    same bytes in every tensor; a block reused from offset 0 starts again as a residual."""
    n = 3 * BS - 1
    k, v = _rows(n, 5), _rows(n, 6)
    splits = {"one by one": [1] * n, "at once": [n], "uneven": [3, 5, 1, n - 9]}
    caches = {}
    for label, sizes in splits.items():
        cache = PagedKVCache.create(1, 4, BS, HKV, D, kv_cache_dtype=name)
        start = 0
        for size in sizes:
            s = torch.arange(start, start + size)
            cache.write(0, s + BS, k[s], v[s])  # blocks 1..3
            start += size
        caches[label] = cache
    ref = caches.pop("at once").layers[0]
    for label, cache in caches.items():
        for key, t in ref.items():
            assert torch.equal(cache.layers[0][key], t), (label, key)
    cache = caches["one by one"]
    assert cache.layers[0]["k_full"].flatten().tolist() == [0, 1, 1, 0]
    cache.write(0, torch.tensor([BS]), k[:1], v[:1])  # block 1 reused
    assert cache.layers[0]["k_full"][1].item() == 0
    assert torch.equal(cache.gather(0, torch.tensor([1]), 1)[0], k[:1])


@pytest.mark.parametrize("name", KIVI)
def test_copy_blocks_moves_the_residual(name):
    """Copy-on-write of a partial block (n > 1 forks) and of a full one carries every tensor."""
    cache = PagedKVCache.create(1, 6, BS, HKV, D, kv_cache_dtype=name)
    k, v = _rows(BS + 2, 7), _rows(BS + 2, 8)
    cache.write(0, torch.arange(BS + 2), k, v)
    cache.copy_blocks([(0, 4), (1, 5)])
    for src, dst in ((0, 4), (1, 5)):
        a, b = cache.read_blocks(0, torch.tensor([src])), cache.read_blocks(0, torch.tensor([dst]))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(cache.gather(0, torch.tensor([4, 5]), BS + 2)[0][BS:], k[BS:])


def test_bf16_model_keeps_a_bf16_residual():
    cache = PagedKVCache.create(1, 2, BS, HKV, D, dtype=torch.bfloat16, kv_cache_dtype="kivi4")
    k = _rows(2, 9).bfloat16()
    cache.write(0, torch.arange(2), k, k)
    assert cache.layers[0]["k_res"].dtype == torch.bfloat16
    got_k, got_v = cache.gather(0, torch.tensor([0]), 2)
    assert got_k.dtype == torch.bfloat16 and torch.equal(got_k, k)


@pytest.mark.parametrize("backend", ["torch", "batched"])
@pytest.mark.parametrize("name", KIVI)
def test_a_chunk_attends_as_decoding_would(name, backend):
    """A prefill chunk's queries see each block as decoding would have left it at their own
    entry (exact keys until the block's last entry is written), so attention outputs and cache
    contents are the same token by token, in one chunk, or in chunks that split blocks."""
    from ember.kernels.attention import AttentionMetadata, get_attention_backend

    att = get_attention_backend(backend)
    n = 3 * BS + 2
    g = torch.Generator().manual_seed(50)
    q, k, v = torch.randn(n, 2 * HKV, D, generator=g), _rows(n, 51), _rows(n, 52)
    table = torch.tensor([[3, 0, 5, 1]])
    slots = (table[0, :, None] * BS + torch.arange(BS)).flatten()[:n]
    results = {}
    for label, chunks in {"decode": [1] * n, "one chunk": [n], "split": [BS - 1, 2, BS + 3, n - 2 * BS - 4]}.items():
        cache = PagedKVCache.create(1, 6, BS, HKV, D, kv_cache_dtype=name)
        outs, start = [], 0
        for c in chunks:
            meta = AttentionMetadata([c], [start + c], slots[start:start + c], table)
            outs.append(att.forward(0, q[start:start + c], k[start:start + c], v[start:start + c], meta, cache, D ** -0.5))
            start += c
        results[label] = (torch.cat(outs), cache)
    want, ref_cache = results.pop("decode")
    for label, (got, cache) in results.items():
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=label)
        for key, t in ref_cache.layers[0].items():
            assert torch.equal(cache.layers[0][key], t), (label, key)
    # and it differs from attending to the stored (quantized) blocks alone
    keys, values = ref_cache.gather(0, table[0], n)
    plain = att.attend_one(q, keys, values, D ** -0.5) if backend == "torch" else None
    if plain is not None:
        assert not torch.allclose(plain[:BS - 1], want[:BS - 1], atol=1e-4)


# --- the fused step's C side ------------------------------------------------------------------------
def _lib_and_layout(codec):
    from ember.models.llama_native import _STRUCTS

    lib = native.load("llama_decode")
    abi = native.check_abi(lib, "ember_llama_decode_abi", _STRUCTS)
    layout, table = native.kv_layout(codec, abi["kv_kinds"])
    return lib, layout, table


def _c_store(lib, layout, cache, slots, k, v):
    layer = native.kv_layer(cache.layers[0])
    s = torch.tensor(slots, dtype=torch.int64)
    k, v = k.float().contiguous(), v.float().contiguous()
    p = ctypes.c_void_p
    lib.ember_kv_store(ctypes.byref(layout), ctypes.byref(layer), p(s.data_ptr()), ctypes.c_long(len(slots)),
                       p(k.data_ptr()), p(v.data_ptr()), ctypes.c_long(HKV * D))


@needs_native
@pytest.mark.parametrize("pool", [None, 1], ids=["slot-per-block", "pooled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", KIVI)
def test_c_store_equals_the_codec_write(name, dtype, pool, cpu_variant):
    """The fused step's store leaves the same bytes as the codec's PyTorch write: runs that
    fill a block, stop short of its end, cross into the next, and a block reused from offset 0.
    `pooled`: the residual in a scratch pool of one slot at first (grown as blocks open), so
    blocks and their residual slots differ; passes end (`settle`) after some writes."""
    codec = get_kv_codec(name, BS, HKV, D, dtype)
    lib, layout, _ = _lib_and_layout(codec)
    py, c = PagedKVCache(codec, 1, 6, pool), PagedKVCache(codec, 1, 6, pool)
    writes = [([8, 9, 10], 1.0), ([11, 12], 40.0), ([13], 0.01), ([20, 21, 22, 23], 5.0), ([8, 9], 2.0),
              ([14, 15, 16], 3.0)]
    for i, (slots, spread) in enumerate(writes):
        k, v = _rows(len(slots), 10 + i, spread).to(dtype), _rows(len(slots), 20 + i, spread).to(dtype)
        py.write(0, torch.tensor(slots), k, v)
        c.open(torch.tensor(slots))  # what the fused step's caller does before the C store
        _c_store(lib, layout, c, slots, k, v)
        for key in py.layers[0]:
            assert torch.equal(py.layers[0][key], c.layers[0][key]), (name, i, key)
        if pool is not None and i in (1, 3):
            py.settle(), c.settle()
    if pool is not None:
        assert py.scratch.num_grows > 0 and py.scratch.held() == c.scratch.held()
        assert sorted(py.scratch.held()) == [2, 3, 4], "open blocks (and those this pass filled) keep their slots"


def _attend_reference(cache, table, n, q, scale):
    keys, values = (x.reshape(-1, HKV, D)[:n] for x in cache.codec.read_fp32(cache.layers[0], table))
    group = q.shape[0] // HKV
    kr, vr = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)  # [n, H, D]
    p = torch.softmax(torch.einsum("hd,thd->ht", q, kr) * scale, -1)
    return torch.einsum("ht,thd->hd", p, vr)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", KIVI)
@pytest.mark.parametrize("pool", [None, 2], ids=["slot-per-block", "pooled"])
def test_c_attention_equals_the_reference(name, dtype, pool, cpu_variant):
    """Paged attention of the fused step over a KIVI cache (codes dequantized in registers, the
    partial block's keys read from the residual) equals softmax attention over the codec's
    `read`, for 1..3 query heads per KV head and contexts that end mid-block and on a block's end.
    `pooled`: the residual in a scratch pool (grown from 2 slots), each pass settled but the last,
    so full blocks hold no residual slot and are read quantized."""
    codec = get_kv_codec(name, BS, HKV, D, dtype)
    lib, layout, _ = _lib_and_layout(codec)
    cache = PagedKVCache(codec, 1, 8, pool)
    n_max = 5 * BS - 1
    table = torch.tensor([6, 2, 7, 0, 4], dtype=torch.int64)
    slots = (table[:, None] * BS + torch.arange(BS)).flatten()[:n_max]
    k, v = _rows(n_max, 31).to(dtype), _rows(n_max, 32).to(dtype)
    p = ctypes.c_void_p
    for n in (1, 3, BS, 2 * BS + 1, 4 * BS, n_max):
        cache.write(0, slots[:n], k[:n], v[:n])  # from offset 0: each block starts afresh
        layer = native.kv_layer(cache.layers[0])  # (a grown pool moves the residual)
        for group in (1, 2, 3):
            q = torch.randn(group * HKV, D, generator=torch.Generator().manual_seed(n + group))  # [H, D]
            scale = D ** -0.5
            want = _attend_reference(cache, table, n, q, scale)
            out = torch.empty_like(q)
            tab = table.contiguous()
            lib.ember_kv_attend(ctypes.byref(layout), ctypes.byref(layer), p(q.data_ptr()), ctypes.c_long(group * HKV),
                                p(tab.data_ptr()), ctypes.c_long(n), ctypes.c_float(scale), p(out.data_ptr()))
            torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5 * math.sqrt(D))
        if pool is not None and n != n_max:
            cache.settle()
            assert len(cache.scratch.held()) == (n % BS != 0)
    # The whole cache written, then queries over its first L entries: each sees the blocks as
    # decoding would have left them at entry L - 1 (KiviCodec.views), whole blocks filled after
    # it included. (fp32: the views are in the model's dtype.)
    for L in range(2, n_max + 1) if dtype == torch.float32 else ():
        *_, (a, b, keys, values) = cache.views(0, table, L - 2, L)
        assert b == L
        q = torch.randn(2 * HKV, D, generator=torch.Generator().manual_seed(L))
        scores = torch.einsum("hd,thd->ht", q, keys.float().repeat_interleave(2, 1)) * D ** -0.5
        want = torch.einsum("ht,thd->hd", torch.softmax(scores, -1), values.float().repeat_interleave(2, 1))
        out = torch.empty_like(q)
        lib.ember_kv_attend(ctypes.byref(layout), ctypes.byref(layer), p(q.data_ptr()), ctypes.c_long(2 * HKV),
                            p(table.data_ptr()), ctypes.c_long(L), ctypes.c_float(D ** -0.5), p(out.data_ptr()))
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5 * math.sqrt(D))
