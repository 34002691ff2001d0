"""`bfp4`, `bfp8` KV codecs (and their 64-channel-group forms `bfp4-g64`, `bfp8-g64`): contents equal ember/numerics/bfp.py's encoding (itself held to
its own reference in tests/numerics/test_bfp.py), the packing round trips, sizes, and the
codec in the serving path (swap, prefix cache, n > 1) on the fused C step and on the
PyTorch path. The C store and attention are held to the codec in test_codecs.py."""

from __future__ import annotations

import pytest
import torch

from ember import SamplingParams
from ember.kernels import native
from ember.kv.cache import PagedKVCache
from ember.kv.codecs import get_kv_codec
from ember.kv.codecs.bfp import pack_nibbles, unpack_nibbles
from ember.numerics.bfp import bfp_quantize
from tests.engine.conftest import assert_no_leak, count_near_ties, make_llm, mixed_prompts  # noqa: F401 (fixtures)

BS, HKV, D = 16, 3, 64


@pytest.mark.parametrize("name, bits, group, d", [("bfp4", 4, 32, D), ("bfp8", 8, 32, D), ("bfp4-g64", 4, 64, D),
                                                  ("bfp8-g64", 8, 64, D), ("bfp4-g64", 4, 64, 128)])
def test_contents_are_the_bfp_encoding_whatever_the_writes(name, bits, group, d):
    torch.manual_seed(0)
    k, v = torch.randn(40, HKV, d) * 3, torch.randn(40, HKV, d) * torch.rand(40, 1, 1) * 5
    k[:, :, 1] *= 50  # an outlier channel: with groups of 64 it sets the exponent of the whole group
    whole, split = (PagedKVCache.create(1, 4, BS, HKV, d, torch.float32, name) for _ in range(2))
    slots = torch.arange(40) + 5
    whole.write(0, slots, k, v)
    for a, b in ((0, 3), (3, 20), (20, 40)):  # chunked writes land the same bytes
        split.write(0, slots[a:b], k[a:b], v[a:b])
    table = torch.arange(4)
    kk, vv = whole.gather(0, table, 45)
    assert torch.equal(kk[5:], bfp_quantize(k, group, bits)) and torch.equal(vv[5:], bfp_quantize(v, group, bits))
    assert whole.layers[0]["k_exp"].shape[-1] == d // group
    for a, b in zip(whole.layers[0].values(), split.layers[0].values()):
        assert torch.equal(a, b)


def test_sizes_against_bf16():
    names = ("bfp4", "bfp8", "bfp4-g64", "bfp8-g64", "bf16")
    per_token = {n: get_kv_codec(n, BS, HKV, D, torch.float32).bytes_per_block() / BS for n in names}
    assert per_token["bfp4"] == 2 * HKV * (D / 2 + D / 32)  # nibbles + an exponent byte per 32
    assert per_token["bfp8"] == 2 * HKV * (D + D / 32)
    assert per_token["bfp4-g64"] == 2 * HKV * (D / 2 + D / 64)
    assert per_token["bfp8-g64"] == 2 * HKV * (D + D / 64)
    assert per_token["bf16"] / per_token["bfp4"] > 3.7 and per_token["bf16"] / per_token["bfp4-g64"] > 3.8
    # a head narrower than the group: one group a head, as bfp4
    assert get_kv_codec("bfp4-g64", BS, HKV, 32, torch.float32).group == 32


def test_nibbles_round_trip():
    codes = torch.arange(-8, 8, dtype=torch.int8).repeat(4).reshape(2, 32)
    packed = pack_nibbles(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 16)
    assert int(packed[0, 0]) == (-8 & 0xF) | ((-7 & 0xF) << 4)
    assert torch.equal(unpack_nibbles(packed), codes)


def test_bad_head_dim_is_a_clear_error():
    with pytest.raises(ValueError, match="bfp4: head_dim 48 does not split into groups of 32"):
        get_kv_codec("bfp4", BS, HKV, 48, torch.float32)
    with pytest.raises(ValueError, match="bfp8-g64: head_dim 96 does not split into groups of 64"):
        get_kv_codec("bfp8-g64", BS, HKV, 96, torch.float32)


@pytest.mark.parametrize("fused", ["auto", pytest.param("off", marks=pytest.mark.slow)])
def test_bfp8_in_the_serving_path(make_llm, mixed_prompts, fused):
    """On the fused C step and the PyTorch path: swap, chunked prefill, prefix hits and n > 1
    end as one request alone does; 8-bit mantissas stay close to fp32 KV."""
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=5)
    prompts = [{"prompt_token_ids": p["prompt_token_ids"][:64]} for p in mixed_prompts[:8]]
    alone = make_llm(max_num_seqs=1, enable_prefix_caching=False, kv_cache_dtype="bfp8", fused_decode=fused)
    assert (alone.engine.runner.decoder is not None) == (fused == "auto" and native.available())
    reference = [alone.generate(p, params)[0].outputs[0] for p in prompts]
    llm = make_llm(kv_cache_tokens=16 * 12, max_num_seqs=8, max_num_batched_tokens=32, preemption="swap",
                   swap_space="16MiB", kv_cache_dtype="bfp8", fused_decode=fused)
    outs = [o.outputs[0] for o in llm.generate(prompts, params)]
    assert llm.engine.scheduler.preemptor.num_swapped_in > 0
    outs += [o.outputs[0] for o in llm.generate(prompts[-2:], params)]
    assert llm.engine.kv.stats.hits > 0
    assert count_near_ties(reference + reference[-2:], outs) <= 1
    forked = llm.generate(prompts[2], SamplingParams(n=3, temperature=0, max_tokens=8, ignore_eos=True))[0]
    assert all(o.token_ids == reference[2].token_ids for o in forked.outputs)
    assert_no_leak(llm)
    fp32 = make_llm(max_num_seqs=1, enable_prefix_caching=False)
    plain = [fp32.generate(p, params)[0].outputs[0] for p in prompts]
    assert count_near_ties(plain, reference, 0.5) <= 2  # 8-bit mantissas: close to fp32 KV


def test_pairs_by_norm_keeps_rope_pairs_together_largest_first():
    from ember.kv.codecs.bfp import pairs_by_norm

    rms = torch.tensor([[1.0, 9.0, 2.0, 0.5, 1.0, 0.0, 2.0, 0.5]])  # D = 8: pairs (0,4) (1,5) (2,6) (3,7)
    assert pairs_by_norm(rms).tolist() == [[1, 5, 2, 6, 0, 4, 3, 7]]


def test_bfp4_sorted_groups_the_large_channels_and_reads_back_in_model_order():
    """Bound by hand (what bind_layer does from a calibration prefill): keys whose large
    channels sit in every 32-channel group lose their small channels under bfp4; sorted, the
    large ones share one group and the rest keep their bits. q.k needs the model's channel order,
    so `read` undoes the permutation; the bytes are bfp4's of the permuted rows."""
    from ember.kv.codecs.bfp import pairs_by_norm

    d = 128
    torch.manual_seed(1)
    rms = torch.ones(HKV, d)
    for c in (3, 40, 77, 100):  # one large channel (and its RoPE partner) in each group of 32
        rms[:, c] = rms[:, (c + d // 2) % d] = 30.0
    k, v = torch.randn(20, HKV, d) * rms, torch.randn(20, HKV, d)
    plain, srt = (PagedKVCache.create(1, 2, BS, HKV, d, torch.float32, n) for n in ("bfp4", "bfp4-sorted"))
    perm = pairs_by_norm(rms)
    srt.layers[0] |= {"k_perm": perm, "k_unperm": perm.argsort(-1)}
    slots = torch.arange(20)
    plain.write(0, slots, k, v)
    srt.write(0, slots, k, v)
    (kp, vp), (ks, vs) = plain.gather(0, torch.arange(2), 20), srt.gather(0, torch.arange(2), 20)
    assert torch.equal(vs, vp)  # values as bfp4
    assert torch.equal(ks, bfp_quantize(k.gather(-1, perm.expand_as(k)), 32, 4).gather(-1, perm.argsort(-1).expand_as(k)))
    small = rms[0] == 1  # sorted, 24 of the 120 small channels still share the large ones' group
    assert (ks - k)[..., small].abs().mean() < (kp - k)[..., small].abs().mean() / 2
    unbound = PagedKVCache.create(1, 2, BS, HKV, d, torch.float32, "bfp4-sorted")
    with pytest.raises(RuntimeError, match="not bound to a model"):
        unbound.write(0, slots, k, v)


def test_bfp4_sorted_calibrates_at_bind_and_runs_on_the_pytorch_path(tmp_path):
    from ember.kv.codecs.bfp import key_channel_rms, pairs_by_norm
    from ember.loader import load_model
    from tests.loader.builders import tiny_llama, write_llama_gguf

    lm = load_model(write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(seed=3, hidden_size=256, num_attention_heads=4,
                                                                       num_key_value_heads=2)))
    cfg = lm.config
    cache = PagedKVCache.create(cfg.num_layers, 4, BS, cfg.num_kv_heads, cfg.head_dim, kv_cache_dtype="bfp4-sorted")
    assert cache.codec.native_kind is None
    cache.bind_model(lm.model)
    rms = key_channel_rms(lm.model)
    assert rms.shape == (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim) and bool((rms > 0).all())
    for layer, tensors in enumerate(cache.layers):
        perm = tensors["k_perm"]
        assert sorted(perm[0].tolist()) == list(range(cfg.head_dim))
        assert torch.equal(perm, pairs_by_norm(rms[layer]))
    # through decode steps (the fused step refuses it: PyTorch path), close to uncompressed keys
    from ember.eval.decode_nll import decode_window_nll

    windows = torch.randint(cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    exact, sorted_ = (decode_window_nll(lm.model, windows, 0, kv_cache_dtype=n, block_size=BS) for n in ("auto", "bfp4-sorted"))
    assert bool(torch.isfinite(sorted_).all()) and abs(float(sorted_.mean() - exact.mean())) < 0.1
