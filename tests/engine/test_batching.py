"""Batched greedy decoding equals one-request-at-a-time decoding, whatever the scheduling."""

from __future__ import annotations

import pytest

from ember import SamplingParams
from tests.engine.conftest import assert_no_leak, count_near_ties

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def reference(make_llm, mixed_prompts):
    """Each prompt alone (max_num_seqs=1), no prefix cache, reference attention."""
    llm = make_llm(max_num_seqs=1, enable_prefix_caching=False, attention="torch")
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=5)
    outs = [llm.generate(p, params)[0].outputs[0] for p in mixed_prompts]
    assert_no_leak(llm)
    return outs




# Every budget with prefix caching on; off, the tightest budget (the longest run) is slow-only:
# budget 64 off keeps the plain chunked path in the default suite.
@pytest.mark.parametrize("budget, prefix_caching", [
    (16, True), (64, True), (512, True), pytest.param(16, False, marks=pytest.mark.slow), (64, False), (512, False)])
def test_batched_equals_sequential(make_llm, mixed_prompts, reference, budget, prefix_caching):
    llm = make_llm(max_num_batched_tokens=budget, enable_prefix_caching=prefix_caching, max_num_seqs=32)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = [o.outputs[0] for o in llm.generate(mixed_prompts, params)]
    near_ties = count_near_ties(reference, outs)
    print(f"budget {budget}, prefix caching {prefix_caching}: {near_ties} of 32 diverged at a near-tie")
    assert near_ties <= 2, f"{near_ties} of 32 sequences diverged (all at near-ties)"
    assert_no_leak(llm)


@pytest.mark.parametrize("preemption", ["recompute", "swap", "fastswitch"])
def test_preemption_keeps_outputs(make_llm, mixed_prompts, reference, preemption):
    # 40 blocks of 16 tokens cannot hold 32 running sequences of up to 172 tokens.
    llm = make_llm(kv_cache_tokens=40 * 16, max_num_seqs=32, max_num_batched_tokens=256,
                   preemption=preemption, swap_space="64MiB")
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = [o.outputs[0] for o in llm.generate(mixed_prompts, params)]
    assert llm.engine.scheduler.num_preemptions > 0, "the pool was meant to be too small"
    preemptor = llm.engine.scheduler.preemptor
    if preemption == "swap":
        assert preemptor.num_swapped_out > 0 and preemptor.num_swapped_in > 0
    if preemption == "fastswitch":
        s = preemptor.stats
        assert s.swapped_out > 0 and s.swapped_in == s.swapped_out and s.blocks_copied_in > 0
        assert not preemptor.inflight and preemptor.num_host_blocks_used == 0
        print(f"fastswitch: {s}")
    near_ties = count_near_ties(reference, outs)
    print(f"preemption {preemption}: {llm.engine.scheduler.num_preemptions} preemptions, "
          f"{near_ties} of 32 diverged at a near-tie")
    assert_no_leak(llm)
