"""Every KV codec inside the serving path: greedy output batched (chunked prefill, prefix
cache, preemption by recompute and swap, n > 1 forks, the fused step) equals one request at a
time with the same codec, and no block is leaked. KIVI's blocks hold per-channel key scales
over the whole block, yet chunking does not change what is stored or read: each query sees the
blocks as decoding would have left them (KiviCodec.views); kivi2's looser check below is for
float noise alone."""

from __future__ import annotations

import pytest

from ember import SamplingParams
from ember.kernels import native
from tests.engine.conftest import NEAR_TIE_NATS, assert_no_leak, count_near_ties

# bf16, fp8-e5m2 and kivi2 share their code paths with auto, fp8-e4m3 and kivi4: slow, to keep
# `make test` short.
CODECS = [pytest.param("bf16", marks=pytest.mark.slow), "fp8-e4m3", pytest.param("fp8-e5m2", marks=pytest.mark.slow),
          "int8", "kivi4", pytest.param("kivi2", marks=pytest.mark.slow)]
# e5m2 keeps 2 mantissa bits: a float-noise difference between batched and alone GEMMs (1e-6)
# that moves a K/V element across a rounding step changes it by up to 12.5%, so greedy paths can
# part beyond near-ties. For it the check is looser: a few sequences may part, each only onto one
# of the reference's top alternatives.
# kivi2 likewise: its 4 levels a group turn such a difference into a third of the group's range.
NEAR_TIES = {"fp8-e5m2": (float("inf"), 3), "kivi2": (float("inf"), 3)}  # codec -> (logprob gap allowed, sequences that may part)
PARAMS = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=5)


@pytest.mark.parametrize("codec", CODECS)
def test_codec_in_the_serving_path(make_llm, mixed_prompts, codec):
    prompts = [{"prompt_token_ids": p["prompt_token_ids"][:64]} for p in mixed_prompts[:8]]
    alone = make_llm(max_num_seqs=1, enable_prefix_caching=False, kv_cache_dtype=codec)
    assert (alone.engine.runner.decoder is not None) == native.available()
    reference = [alone.generate(p, PARAMS)[0].outputs[0] for p in prompts]
    assert_no_leak(alone)
    # A pool too small for all of them at once (preemption by swap), chunks of 32 tokens; then
    # the last prompts again, from the prefix cache.
    llm = make_llm(kv_cache_tokens=16 * 16, max_num_seqs=8, max_num_batched_tokens=32, preemption="swap",
                   swap_space="16MiB", kv_cache_dtype=codec)
    outs = [o.outputs[0] for o in llm.generate(prompts, PARAMS)]
    engine = llm.engine
    assert engine.scheduler.num_preemptions > 0 and engine.scheduler.preemptor.num_swapped_in > 0
    outs += [o.outputs[0] for o in llm.generate(prompts[-2:], PARAMS)]
    assert engine.kv.stats.hits > 0
    nats, allowed = NEAR_TIES.get(codec, (NEAR_TIE_NATS, 1))
    assert count_near_ties(reference + reference[-2:], outs, nats) <= allowed
    assert_no_leak(llm)
    # n > 1: the siblings fork from the parent's prompt blocks, copy-on-write on the partial one;
    # greedy siblings agree with each other and with the request alone.
    forked = llm.generate(prompts[3], SamplingParams(n=3, temperature=0, max_tokens=8, ignore_eos=True))[0]
    assert all(o.token_ids == reference[3].token_ids for o in forked.outputs)
    assert_no_leak(llm)


def test_kivi4_greedy_stays_close_to_fp32_kv(make_llm, mixed_prompts):
    """kivi4 against the uncompressed cache, one request at a time. Each key is within 1/30 of
    its channel's range over its block (values: of the token's range); on this model that moves
    the next-token log-probabilities by up to ~1 nat in the tail, ~0.01 nats in KL (measured on
    these prompts), so greedy paths may part where the reference's top two are close: a few
    sequences, each onto one of its top alternatives within half a nat. (kivi2's 4 levels move
    them by several nats: its greedy paths part from fp32's on most prompts, often at the first
    token, so it has no such check; KIVI's authors advise 4 bits on GQA models like this one.)"""
    prompts = [{"prompt_token_ids": p["prompt_token_ids"][:64]} for p in mixed_prompts[:8]]
    fp32, kivi = (make_llm(max_num_seqs=1, enable_prefix_caching=False, kv_cache_dtype=c) for c in ("auto", "kivi4"))
    reference = [fp32.generate(p, PARAMS)[0].outputs[0] for p in prompts]
    outs = [kivi.generate(p, PARAMS)[0].outputs[0] for p in prompts]
    assert count_near_ties(reference, outs, 0.5) <= 3
    # the PyTorch path (no fused step) reads the same blocks the same way
    assert kivi.engine.runner.decoder is not None or not native.available()
    torch_path = make_llm(max_num_seqs=1, enable_prefix_caching=False, kv_cache_dtype="kivi4", fused_decode="off")
    assert count_near_ties(outs, [torch_path.generate(p, PARAMS)[0].outputs[0] for p in prompts]) <= 1


def test_unknown_codec_is_a_clear_error(make_llm):
    with pytest.raises(ValueError, match="kv_cache_dtype 'fp4' is not one of: .*fp8-e4m3"):
        make_llm(kv_cache_dtype="fp4")
