"""The fused step (csrc/llama_decode.c) against the model's own PyTorch forward.

One step of several sequences, each at the end of a prefilled context in the paged cache,
computed both ways from the same cache: the final hidden states and the K/V written must
agree to fp32 rounding, for every storage the C kernels read (fp32, int8, int4), at batch
sizes on both kernel paths (up to 4 rows: weights decoded into the FMAs; more: decoded rows
reused from L1). Decode steps bring one token per sequence; mixed steps bring prefill chunks
too (causal attention inside a chunk, after cached tokens). The engine-level checks are in
tests/engine/test_fused_decode.py.
"""

from __future__ import annotations

import random

import pytest
import torch

from ember.kernels import native
from ember.kernels.attention import AttentionMetadata, get_attention_backend
from ember.kv.cache import PagedKVCache

needs_native = pytest.mark.skipif(not native.available(), reason="the C kernels need a C compiler and AVX2")
BLOCK = 16


def _meta(lens, new, tables):
    """Metadata of `new` tokens at the end of each sequence of total length `lens`."""
    slots = [tables[i][p // BLOCK] * BLOCK + p % BLOCK for i, n in enumerate(lens) for p in range(n - new[i], n)]
    width = max(len(t) for t in tables)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long)
    return AttentionMetadata(list(new), list(lens), torch.tensor(slots, dtype=torch.long), bt)


def _one_step_both_ways(lm, contexts, seed=0, new=None):
    """contexts[i] prefilled, then one step of new[i] tokens (default 1) for every sequence."""
    model, cfg = lm.model, lm.config
    new = new or [1] * len(contexts)
    rng = random.Random(seed)
    cache = PagedKVCache(cfg.num_layers, 128, BLOCK, cfg.num_kv_heads, cfg.head_dim)
    free = list(range(1, 128))
    rng.shuffle(free)  # scattered, non-contiguous blocks
    tables = [[free.pop() for _ in range(-(-(len(c) + n) // BLOCK))] for c, n in zip(contexts, new)]
    reference = get_attention_backend("torch")
    with torch.inference_mode():
        for i, ctx in enumerate(contexts):
            if ctx:
                meta = _meta([len(ctx)], [len(ctx)], [tables[i]])
                model(torch.tensor(ctx), torch.arange(len(ctx)), meta, cache, reference)
        ids = torch.tensor([rng.randrange(cfg.vocab_size) for n in new for _ in range(n)])
        positions = torch.tensor([p for c, n in zip(contexts, new) for p in range(len(c), len(c) + n)])
        meta = _meta([len(c) + n for c, n in zip(contexts, new)], new, tables)
        fused_cache = PagedKVCache(cfg.num_layers, 128, BLOCK, cfg.num_kv_heads, cfg.head_dim)
        for a, b in zip(fused_cache.k + fused_cache.v, cache.k + cache.v):
            a.copy_(b)
        expected = model(ids, positions, meta, cache, reference)
        got = model.native_decoder(fused_cache, get_attention_backend("batched"))(ids, positions, meta)
    return expected, got, cache, fused_cache


@needs_native
@pytest.mark.parametrize("batch", [1, 3, 7])
@pytest.mark.parametrize("linear", ["dense", "int8", "int4"])
def test_fused_step_matches_the_pytorch_forward(request, linear, batch, topics_text):
    lm = request.getfixturevalue({"dense": "ember_lm", "int8": "ember_lm_int8", "int4": "ember_lm_int4"}[linear])
    ids = lm.tokenizer.encode(topics_text[:20_000])
    rng = random.Random(batch)
    # Lengths around block boundaries (15, 16, 17 tokens) and a longer one.
    lengths = [rng.choice([1, 15, 16, 17, 40, 100]) for _ in range(batch)]
    contexts = [ids[s:s + n] for s, n in zip(range(0, 10_000, 500), lengths)]
    expected, got, cache, fused_cache = _one_step_both_ways(lm, contexts, seed=batch)
    assert got.shape == expected.shape
    if linear == "int4":
        # int8 activations: an ulp of difference can move a value to the next int8 step, so the
        # two paths drift apart over 30 layers by about the activation quantization error
        # (~3% of the final hidden state measured; a wrong kernel gives errors of order 100%).
        assert (got - expected).norm() / expected.norm() < 5e-2
        layers = [0]  # the first layer's K/V are computed before any quantized activation differs
    else:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
        layers = range(len(cache.k))
    for i in layers:  # the same K/V written
        for a, b in ((fused_cache.k[i], cache.k[i]), (fused_cache.v[i], cache.v[i])):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


@needs_native
@pytest.mark.parametrize("linear", ["dense", "int4"])
def test_fused_step_takes_prefill_chunks_mixed_with_decodes(request, linear, topics_text):
    """A whole prompt, a chunk after 40 cached tokens (crossing block boundaries) and two
    decodes in one step: each chunk token attends causally to its own sequence."""
    lm = request.getfixturevalue({"dense": "ember_lm", "int4": "ember_lm_int4"}[linear])
    ids = lm.tokenizer.encode(topics_text[:20_000])
    contexts = [[], ids[500:540], ids[1000:1017], ids[2000:2001]]
    expected, got, cache, fused_cache = _one_step_both_ways(lm, contexts, seed=5, new=[37, 29, 1, 1])
    assert got.shape == expected.shape == (68, lm.config.hidden_size)
    pairs = [(a, b) for i in range(len(cache.k)) for a, b in ((fused_cache.k[i], cache.k[i]), (fused_cache.v[i], cache.v[i]))]
    if linear == "int4":
        assert (got - expected).norm() / expected.norm() < 5e-2  # as in the decode test above
        # Layer 0's K/V: over 68 rows, the two RMSNorms' last-ulp differences move a few int8
        # activations by one step (96 of 393216 values differ measurably): close, not equal.
        for a, b in pairs[:2]:
            assert (a - b).norm() / b.norm() < 1e-3
    else:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
        for a, b in pairs:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_only_int4_sends_prefill_through_the_fused_step(ember_lm, ember_lm_int8, ember_lm_int4):
    """Dense and int8 prefill is faster on torch's GEMM; int4's own kernel beats it."""
    if not native.available():
        pytest.skip("the C kernels need a C compiler and AVX2")
    takes = {}
    for name, lm in (("dense", ember_lm), ("int8", ember_lm_int8), ("int4", ember_lm_int4)):
        cache = PagedKVCache(lm.config.num_layers, 4, BLOCK, lm.config.num_kv_heads, lm.config.head_dim)
        takes[name] = lm.model.native_decoder(cache, get_attention_backend("batched")).takes_prefill
    assert takes == {"dense": False, "int8": False, "int4": True}


@needs_native
@pytest.mark.parametrize("kv_heads", [1, 4, 2], ids=["group-4", "no-gqa", "group-2"])
def test_fused_step_at_other_gqa_ratios(tmp_path, kv_heads):
    """The fused attention takes query heads 3 at a time per KV head: groups of 4 (3 + 1), 1
    and 2 hold to the PyTorch forward too, on a tiny random llama (4 heads of 64)."""
    from ember.loader import load_model
    from tests.loader.builders import tiny_llama, write_llama_gguf

    model = tiny_llama(seed=7, hidden_size=256, intermediate_size=256, num_attention_heads=4,
                       num_key_value_heads=kv_heads)
    lm = load_model(write_llama_gguf(tmp_path / "tiny.gguf", model))
    rng = random.Random(kv_heads)
    contexts = [[rng.randrange(lm.config.vocab_size) for _ in range(n)] for n in (0, 20, 33)]
    expected, got, _, _ = _one_step_both_ways(lm, contexts, seed=kv_heads, new=[9, 5, 1])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
