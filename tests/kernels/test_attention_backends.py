"""Attention backends held to plain references on random varlen batches, with and without a paged cache."""

from __future__ import annotations

import pytest
import torch

from ember.kernels import native
from ember.kernels.attention import AttentionMetadata, get_attention_backend
from ember.kernels.attention.native_prefill import attend_causal
from ember.kernels.attention.torch_ref import causal_mask
from ember.kv.cache import PagedKVCache
from ember.numerics.lmul import lmul


def naive_attention(q, k, v, scale, mul=None):
    """One sequence, [q, H, D] x [ctx, Hkv, D]: explicit scores, mask, softmax."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    if mul is None:
        scores = torch.einsum("qhd,khd->hqk", q, k)
    else:
        scores = mul(q.transpose(0, 1)[:, :, None, :], k.transpose(0, 1)[:, None, :, :]).sum(-1)
    scores = scores * scale
    scores = scores.masked_fill(~causal_mask(q.shape[0], k.shape[0]), float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def random_batch(lengths, heads=4, kv_heads=2, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sum(lengths)
    return (torch.randn(t, heads, dim, generator=g), torch.randn(t, kv_heads, dim, generator=g),
            torch.randn(t, kv_heads, dim, generator=g))


@pytest.mark.parametrize("backend", ["torch", "batched", "lmul4"])
def test_no_cache_matches_naive(backend):
    lengths = [1, 7, 33]
    q, k, v = random_batch(lengths)
    out = get_attention_backend(backend).forward(0, q, k, v, AttentionMetadata.no_cache(lengths), None, 0.25)
    mul = (lambda a, b: lmul(a, b, 4)) if backend.startswith("lmul") else None
    start = 0
    for n in lengths:
        ref = naive_attention(q[start:start + n], k[start:start + n], v[start:start + n], 0.25, mul)
        torch.testing.assert_close(out[start:start + n], ref, atol=1e-5, rtol=1e-4)
        start += n


@pytest.mark.skipif(not native.available(), reason="the C kernels need a C compiler and AVX2")
@pytest.mark.parametrize("q_len,ctx,dim", [(2, 2, 64), (7, 7, 64), (5, 40, 64), (64, 300, 32), (33, 33, 64), (1, 9, 64)])
def test_c_prefill_kernel_matches_naive(q_len, ctx, dim):
    """csrc/attention.c: GQA 9/3 as in the default model, odd chunks (a row paired with itself),
    chunks after cached tokens, and q rows strided like the model's view of its fused QKV."""
    g = torch.Generator().manual_seed(q_len * 1000 + ctx)
    qkv = torch.randn(q_len, 15 * dim, generator=g)
    q = qkv[:, :9 * dim].view(q_len, 9, dim)
    k, v = torch.randn(ctx, 3, dim, generator=g), torch.randn(ctx, 3, dim, generator=g)
    out = attend_causal(q, k, v, dim ** -0.5)
    torch.testing.assert_close(out, naive_attention(q, k, v, dim ** -0.5), atol=1e-5, rtol=1e-4)


def test_c_prefill_kernel_declines_what_it_cannot_take():
    q, k, v = random_batch([8], heads=4, kv_heads=2, dim=16)
    assert attend_causal(q, k, v, 0.25) is None  # head size not a multiple of 32
    q, k, v = random_batch([8], heads=4, kv_heads=2, dim=64)
    assert attend_causal(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.25) is None


@pytest.mark.parametrize("dim", [16, 64])  # 64: the batched backend's prefill chunks take the C kernel
@pytest.mark.parametrize("backend_name", ["torch", "batched"])
def test_paged_cache_chunked_prefill_and_decode(backend_name, dim):
    """Prefill chunks and decodes through scattered blocks equal one full causal pass."""
    block = 4
    cache = PagedKVCache.create(num_layers=1, num_blocks=32, block_size=block, num_kv_heads=2, head_dim=dim)
    backend = get_attention_backend(backend_name)
    lengths = [13, 7, 9]
    q, k, v = random_batch(lengths, seed=1, dim=dim)
    full = get_attention_backend("torch").forward(0, q, k, v, AttentionMetadata.no_cache(lengths), None, 0.25)
    tables = [[9, 2, 30, 5], [17, 11], [3, 0, 21]]  # deliberately out of order
    seqs = [(0, 13), (13, 20), (20, 29)]
    done = [0, 0, 0]
    # mixed steps: prefill chunks, single-token decodes and a finished sequence side by side
    for chunk in ([8, 6, 3], [1, 1, 4], [4, 0, 1], [0, 0, 1]):
        rows, qlens, ctx, slots, tbl = [], [], [], [], []
        for i, n in enumerate(chunk):
            if n == 0:
                continue
            a = seqs[i][0] + done[i]
            rows.extend(range(a, a + n))
            pos = range(done[i], done[i] + n)
            slots.extend(tables[i][p // block] * block + p % block for p in pos)
            qlens.append(n)
            ctx.append(done[i] + n)
            tbl.append(tables[i])
            done[i] += n
        width = max(map(len, tbl))
        bt = torch.tensor([t + [0] * (width - len(t)) for t in tbl])
        meta = AttentionMetadata(qlens, ctx, torch.tensor(slots), bt)
        idx = torch.tensor(rows)
        out = backend.forward(0, q[idx], k[idx], v[idx], meta, cache, 0.25)
        torch.testing.assert_close(out, full[idx], atol=1e-5, rtol=1e-4)


def test_fresh_cache_is_finite():
    """Batched decode reads padding slots under a mask; 0 x NaN there would poison the output."""
    cache = PagedKVCache.create(num_layers=2, num_blocks=8, block_size=4, num_kv_heads=2, head_dim=8)
    assert all(torch.isfinite(t).all() for t in cache.k + cache.v)
