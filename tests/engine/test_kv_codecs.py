"""Every KV codec inside the serving path: greedy output batched (chunked prefill, prefix
cache, preemption by recompute and swap, n > 1 forks, the fused step) equals one request at a
time with the same codec, and no block is leaked."""

from __future__ import annotations

import pytest

from ember import SamplingParams
from ember.kernels import native
from tests.engine.conftest import NEAR_TIE_NATS, assert_no_leak, count_near_ties

# bf16 and fp8-e5m2 share their code paths with auto and fp8-e4m3: slow, to keep `make test` short.
CODECS = [pytest.param("bf16", marks=pytest.mark.slow), "fp8-e4m3", pytest.param("fp8-e5m2", marks=pytest.mark.slow),
          "int8"]
# e5m2 keeps 2 mantissa bits: a float-noise difference between batched and alone GEMMs (1e-6)
# that moves a K/V element across a rounding step changes it by up to 12.5%, so greedy paths can
# part beyond near-ties. For it the check is looser: a few sequences may part, each only onto one
# of the reference's top alternatives.
NEAR_TIES = {"fp8-e5m2": (float("inf"), 3)}  # codec -> (logprob gap allowed, sequences that may part)
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


def test_unknown_codec_is_a_clear_error(make_llm):
    with pytest.raises(ValueError, match="kv_cache_dtype 'fp4' is not one of: .*fp8-e4m3"):
        make_llm(kv_cache_dtype="fp4")
