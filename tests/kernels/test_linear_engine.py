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
