"""Fused decode inside the engine: greedy output equals the PyTorch path; configurations it
can't run say why (kernel-level checks: tests/models/test_native_decode.py)."""

from __future__ import annotations

import pytest

from ember import LLM, SamplingParams
from ember.kernels import native
from tests.engine.conftest import count_near_ties

# a bf16 logit of ~20 has a 0.125 ulp: rounding alone moves a log-probability by that much
BF16_NEAR_TIE_NATS = 0.25

needs_native = pytest.mark.skipif(not native.available(), reason="the C kernels need a C compiler and AVX2")


@needs_native
def test_fused_decode_greedy_equals_the_pytorch_path(ember_lm_int8, mixed_prompts):
    """int8: both paths run the same fp32-activation kernels, so only near-ties may differ. (int4
    quantizes activations to int8, where an ulp of difference between the paths can move a
    value to the next step: tests/models/test_native_decode.py bounds that drift instead.)"""
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=5)
    runs = {}
    for mode in ("off", "on"):
        llm = LLM(loaded=ember_lm_int8, linear="int8", kv_cache_tokens=8192, threads=2, fused_decode=mode,
                  max_num_seqs=16)
        runs[mode] = [o.outputs[0] for o in llm.generate(mixed_prompts[:16], params, use_tqdm=False)]
        assert (llm.engine.runner.decoder is not None) == (mode == "on")
    assert count_near_ties(runs["off"], runs["on"]) <= 1


@needs_native
def test_fused_decode_reports_why_it_is_off(ember_lm, ember_lm_bf16):
    llm = LLM(loaded=ember_lm, kv_cache_tokens=1024, attention="lmul3")
    assert llm.engine.runner.decoder is None
    assert "'lmul3' attention backend" in llm.engine.fused_decode_off_reason
    with pytest.raises(ValueError, match="fused_decode=on, but .*'lmul3' attention backend is not plain"):
        LLM(loaded=ember_lm, kv_cache_tokens=1024, attention="lmul3", fused_decode="on")
    assert LLM(loaded=ember_lm_bf16, dtype="bf16", kv_cache_tokens=1024).engine.runner.decoder is not None
    assert LLM(loaded=ember_lm, kv_cache_tokens=1024).engine.runner.decoder is not None  # the default
    with pytest.raises(ValueError, match="fused_decode 'yes' is not one of"):
        LLM(loaded=ember_lm, fused_decode="yes")


@needs_native
def test_int4_fused_steps_are_batch_invariant(ember_lm_int4, mixed_prompts):
    """int4 sends prefill chunks through the fused step too, where every row is computed on its
    own (activations quantized per row, one attention per token): batched greedy output at any
    token budget is then token-identical to one request at a time."""
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    prompts = mixed_prompts[:10]
    runs = {}
    for budget in (16, 512):
        llm = LLM(loaded=ember_lm_int4, linear="int4", kv_cache_tokens=8192, threads=2, max_num_batched_tokens=budget,
                  enable_prefix_caching=False)
        assert llm.engine.runner.decoder.takes_prefill
        runs[budget] = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    serial = [llm.generate([p], params, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]
    assert runs[16] == runs[512] == serial


@needs_native
def test_bf16_fused_steps_match_one_request_at_a_time(ember_lm_bf16, mixed_prompts):
    """bf16 runs the fused step on bf16 weights and KV cache (prefill chunks too where the CPU
    has no bf16 GEMM). Batched greedy output at token budgets 16 and 512 equals one request at
    a time except at near-ties: the kernels sum rows in a batch-size-dependent order, and bf16
    logits (the head's output is rounded to bf16) make exact ties common."""
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=5)
    prompts = mixed_prompts[:10]
    runs = {}
    for budget in (16, 512):
        llm = LLM(loaded=ember_lm_bf16, dtype="bf16", kv_cache_tokens=8192, threads=2, max_num_batched_tokens=budget)
        decoder = llm.engine.runner.decoder
        assert decoder is not None and decoder.takes_prefill == (not native.cpu_has_bf16_gemm())
        runs[budget] = [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]
    serial = [llm.generate([p], params, use_tqdm=False)[0].outputs[0] for p in prompts]
    ties = [count_near_ties(serial, runs[budget], nats=BF16_NEAR_TIE_NATS) for budget in (16, 512)]
    print(f"bf16 near-ties against one at a time (budget 16, 512): {ties}")
    assert max(ties) <= 2
