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
