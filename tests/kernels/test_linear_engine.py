"""Quantized linear methods inside the engine: batched greedy equals one-at-a-time greedy, and
the quantized model still predicts what the float model predicts."""

from __future__ import annotations

import random

import pytest
import torch

from ember import LLM, SamplingParams
from ember.kernels import native
from ember.loader import load_model
from tests.engine.conftest import NEAR_TIE_NATS, count_near_ties

MAX_TOKENS = 8
BF16_LOGITS_NEAR_TIE_NATS = 0.25  # two bf16 steps of a logit between 16 and 32


@pytest.fixture(scope="module")
def int8_lm(default_gguf_path):
    return load_model(default_gguf_path, dtype=torch.float32, linear="int8")


@pytest.fixture(scope="module")
def short_prompts(ember_lm, topics_text):
    """8 prompts of 4..40 tokens: with a step budget of 48 every product stays on the int8 kernel."""
    ids = ember_lm.tokenizer.encode(topics_text[:100_000])
    rng = random.Random(6)
    out = []
    for _ in range(8):
        n = rng.randint(4, 40)
        start = rng.randrange(0, len(ids) - n)
        out.append({"prompt_token_ids": ids[start:start + n]})
    return out


def _generate(lm, prompts, **config):
    llm = LLM(loaded=lm, kv_cache_tokens=4096, threads=1, linear="int8", **config)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=5)
    return [o.outputs[0] for o in llm.generate(prompts, params)]


def test_int8_model_uses_the_int8_kernel_and_head(int8_lm):
    layer = int8_lm.model.layers[0]
    from ember.kernels.linear.int8 import codes
    assert codes(layer.qkv_proj.params).dtype == torch.int8 and codes(layer.qkv_proj.params).shape == (960, 576)
    assert int8_lm.model.lm_head.method.name == "int8"


def test_int8_batched_greedy_equals_sequential(int8_lm, short_prompts):
    reference = _generate(int8_lm, short_prompts, max_num_seqs=1, enable_prefix_caching=False, attention="torch")
    batched = _generate(int8_lm, short_prompts, max_num_seqs=8, max_num_batched_tokens=48)
    # Without the C kernels, aten's int8 kernel returns bf16 (the logits too: the head is int8),
    # and on AVX-512 its sums depend on the batch: a near-tie is then two bf16 steps of a logit.
    nats = NEAR_TIE_NATS if native.available() else BF16_LOGITS_NEAR_TIE_NATS
    near_ties = count_near_ties(reference, batched, nats=nats)
    assert near_ties <= 1


def test_int8_greedy_follows_the_float_model(int8_lm, ember_lm, short_prompts):
    quant = _generate(int8_lm, short_prompts, max_num_seqs=8)
    exact = [o.outputs[0] for o in LLM(loaded=ember_lm, kv_cache_tokens=4096, threads=1).generate(
        short_prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True))]
    first = sum(q.token_ids[0] == e.token_ids[0] for q, e in zip(quant, exact))
    agreed = sum(next((i for i, (a, b) in enumerate(zip(q.token_ids, e.token_ids)) if a != b), MAX_TOKENS)
                 for q, e in zip(quant, exact))
    assert first >= 7, f"only {first} of 8 first tokens agree with fp32"
    assert agreed >= 0.6 * 8 * MAX_TOKENS, f"{agreed} leading tokens agree of {8 * MAX_TOKENS}"


def _assert_fused_batched_like_one_at_a_time(lm, linear: str, short_prompts, **one_at_a_time) -> None:
    """The fused step takes the method's weights (prefill too), and 4 prompts batched on it
    greedy-decode as one at a time (`one_at_a_time`: that run's engine options) does, a near-tie
    aside."""
    prompts = [{"prompt_token_ids": p["prompt_token_ids"][:8]} for p in short_prompts[:4]]
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=5)
    run = lambda **cfg: [o.outputs[0] for o in LLM(loaded=lm, kv_cache_tokens=1024, threads=1, linear=linear,  # noqa: E731
                                                  **cfg).generate(prompts, params, use_tqdm=False)]
    llm = LLM(loaded=lm, kv_cache_tokens=1024, threads=1, linear=linear, fused_decode="on")
    assert llm.engine.runner.decoder is not None and llm.engine.runner.decoder.takes_prefill
    fused = run(max_num_seqs=4, fused_decode="on")
    plain = run(max_num_seqs=1, enable_prefix_caching=False, **one_at_a_time)
    assert all(len(o.token_ids) == 4 for o in fused)
    assert count_near_ties(plain, fused, nats=NEAR_TIE_NATS) <= 1


@pytest.fixture(scope="module")
def lmul_lm(default_gguf_path):
    return load_model(default_gguf_path, dtype=torch.float32, linear="lmul")


@pytest.mark.slow
@pytest.mark.skipif(not native.available(), reason="the L-Mul C kernel needs a C compiler and AVX2")
def test_lmul_model_runs_fused_and_batched_like_one_at_a_time(lmul_lm, short_prompts):
    """`lmul` (every product an L-Mul, head included) through the engine: the fused step takes
    its weights; batched greedy equals one-at-a-time greedy and the PyTorch path."""
    assert lmul_lm.model.lm_head.method.name == "lmul"
    _assert_fused_batched_like_one_at_a_time(lmul_lm, "lmul", short_prompts, fused_decode="off", attention="torch")


@pytest.mark.slow
@pytest.mark.skipif(not native.available(), reason="the planes C kernel needs a C compiler and AVX2")
def test_bcq_pow2_model_through_the_engine(default_gguf_path, short_prompts):
    """`bcq-w2-pow2` end to end on the real model: power-of-two plane scales on the planes2
    kernel, the fused step takes its prefill, and batched greedy equals one-at-a-time greedy on
    the fused step. (Not against the PyTorch path: there the activation tables round from
    inputs an ulp apart, and over 30 layers the flips move logprobs by ~0.04 nats here.)"""
    lm = load_model(default_gguf_path, dtype=torch.float32, linear="bcq-w2-pow2")
    scales = lm.model.layers[0].qkv_proj.params["lut_plane_scales"][:, :, :2].float()  # the minimums follow
    assert torch.equal(scales, torch.exp2(torch.log2(scales).round()))
    _assert_fused_batched_like_one_at_a_time(lm, "bcq-w2-pow2", short_prompts, fused_decode="on")


@pytest.mark.slow
def test_gptq_model_through_the_engine(default_gguf_path, ember_lm, short_prompts):
    """`--quantizer gptq` end to end: a tmac-w4 model calibrated on 512 tokens runs in the
    engine (its kernel, its calibration record) and still follows the float model's first greedy
    tokens often."""
    llm = LLM(model=default_gguf_path, dtype="fp32", linear="tmac-w4", quantizer="gptq", calibration_tokens=512,
              kv_cache_tokens=2048, threads=1)
    assert llm.engine.loaded.model.calibration["first_token"] > 16_384
    layer = llm.engine.model.layers[0]
    assert layer.qkv_proj.method.name == "tmac-w4" and "lut_codes" in layer.qkv_proj.params
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    quant = [o.outputs[0].token_ids[0] for o in llm.generate(short_prompts, params, use_tqdm=False)]
    exact = [o.outputs[0].token_ids[0] for o in LLM(loaded=ember_lm, kv_cache_tokens=2048, threads=1).generate(
        short_prompts, params, use_tqdm=False)]
    # 4 of 8 measured: 4 bits per group of 64, and 512 calibration tokens overfit (the default is
    # 8192); a broken quantizer agrees on none
    assert sum(q == e for q, e in zip(quant, exact)) >= 3
