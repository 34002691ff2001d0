"""Windowed perplexity: Ember's figure equals transformers' on the same token windows."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F

from ember.eval import default_eval_text, evaluate_perplexity, token_nll
from ember.eval.perplexity import first_scored_position

ORACLE_CONTEXT, ORACLE_WINDOWS = 512, 2
ORACLE_TEXT_CHARS = 20_000  # a prefix with enough tokens for the windows, cheap to tokenize


@pytest.fixture(scope="module")
def oracle_nll(ember_lm, hf_model, topics_text) -> torch.Tensor:
    """transformers' NLL [windows, context-1] of every prediction in each window (fp64).

    Run once on Ember's token ids; each score mode is a slice of it.
    """
    ids = ember_lm.tokenizer.encode(topics_text[:ORACLE_TEXT_CHARS], add_bos=False)
    windows = torch.tensor(ids[:ORACLE_WINDOWS * ORACLE_CONTEXT]).view(ORACLE_WINDOWS, ORACLE_CONTEXT)
    with torch.inference_mode():
        logits = hf_model(windows).logits[:, :-1].float()
    # Vocabulary as the last dim: torch's CPU log_softmax over a strided middle dim ([B, V, T])
    # is off by up to ~1.4e-4 nats per token, enough to miss the 1e-4 tolerance on its own.
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1), reduction="none")
    return nll.double().view(ORACLE_WINDOWS, ORACLE_CONTEXT - 1)


@pytest.mark.parametrize("score", ["all", "second-half"])
def test_matches_transformers(ember_lm, topics_text, oracle_nll, score):
    result = evaluate_perplexity(ember_lm.model, ember_lm.tokenizer, topics_text[:ORACLE_TEXT_CHARS],
                                 context=ORACLE_CONTEXT, max_tokens=ORACLE_WINDOWS * ORACLE_CONTEXT, score=score,
                                 windows_per_batch=ORACLE_WINDOWS, progress=False)
    first = first_scored_position(ORACLE_CONTEXT, score)
    expected = oracle_nll[:, first:]
    assert result.windows == ORACLE_WINDOWS
    assert result.tokens_scored == expected.numel()
    assert result.perplexity == pytest.approx(math.exp(expected.mean().item()), rel=1e-4)


def test_batching_windows_does_not_change_the_result(ember_lm, topics_text):
    # 5 windows: batches of 4 leave a ragged last batch of 1.
    run = lambda n: evaluate_perplexity(ember_lm.model, ember_lm.tokenizer, topics_text[:5_000], context=32,
                                        max_tokens=5 * 32, windows_per_batch=n, progress=False)
    one, four = run(1), run(4)
    assert one.windows == four.windows == 5
    assert one.tokens_scored == four.tokens_scored
    assert four.perplexity == pytest.approx(one.perplexity, rel=1e-5)


def test_token_nll_is_independent_of_chunking(ember_lm):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, ember_lm.config.hidden_size, generator=gen)
    targets = torch.randint(0, ember_lm.config.vocab_size, (10,), generator=gen)
    whole = token_nll(ember_lm.model, hidden, targets, chunk_rows=1024)
    expected = F.cross_entropy(ember_lm.model.compute_logits(hidden), targets, reduction="none")
    torch.testing.assert_close(whole, expected)
    torch.testing.assert_close(token_nll(ember_lm.model, hidden, targets, chunk_rows=3), whole)


@pytest.mark.parametrize("kwargs, message", [
    ({"context": 1}, "at least 2"),
    ({"context": 10**6}, "beyond the model's maximum"),
    ({"score": "middle"}, "unknown score mode"),
    ({"context": 2, "score": "second-half"}, "scores no prediction"),
    ({"windows_per_batch": 0}, "windows_per_batch"),
    ({"context": 64, "max_tokens": 32}, "less than one window"),
    ({"text": "Too short."}, "fewer than one window"),
])
def test_argument_errors(ember_lm, kwargs, message):
    kwargs = {"text": "word " * 1000, **kwargs}
    with pytest.raises(ValueError, match=message):
        evaluate_perplexity(ember_lm.model, ember_lm.tokenizer, progress=False, **kwargs)


def test_json_names_the_recipe(ember_lm, topics_text):
    text = topics_text[:3_000]
    result = evaluate_perplexity(ember_lm.model, ember_lm.tokenizer, text, context=64, max_tokens=200,
                                 score="second-half", progress=False)
    out = json.loads(json.dumps(result.to_json()))
    assert out["text_sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert out["context"] == 64 and out["score"] == "second-half"
    assert out["windows"] == 3  # 200 tokens: three full windows, the tail of 8 dropped
    assert out["tokens_scored"] == 3 * (64 - 1 - 32)  # logits 32..62 predict tokens 33..63
    assert out["tokens_total"] == len(ember_lm.tokenizer.encode(text, add_bos=False))
    assert out["perplexity"] == pytest.approx(math.exp(out["nll_sum"] / out["tokens_scored"]))
    assert out["seconds"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("score, anchor", [("all", 14.2857), ("second-half", 11.7941)])
def test_full_recipe_matches_the_anchor(ember_lm, score, anchor):
    """shared/anchors/baseline-cpu.md: 65,536 tokens, 128 windows of 512, transformers fp32.

    The text differs between Python versions; the anchors were measured on CPython 3.11.7.
    """
    result = evaluate_perplexity(ember_lm.model, ember_lm.tokenizer, default_eval_text(), context=512,
                                 max_tokens=65_536, score=score, progress=False)
    assert result.windows == 128
    assert result.perplexity == pytest.approx(anchor, rel=0.01)


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("attention", ["batched", "torch"])  # fused decode step / model forward over the cache
def test_teacher_forced_decode_equals_the_windowed_forward(ember_lm, topics_text, attention, block_size):
    from ember.kernels.attention import get_attention_backend

    kw = dict(context=48, max_tokens=96, windows_per_batch=2, progress=False)
    ref = evaluate_perplexity(ember_lm.model, ember_lm.tokenizer, topics_text, **kw)
    dec = evaluate_perplexity(ember_lm.model, ember_lm.tokenizer, topics_text, decode=True,
                              attention=get_attention_backend(attention), block_size=block_size, **kw)
    assert dec.tokens_scored == ref.tokens_scored == 2 * 47
    assert abs(dec.perplexity / ref.perplexity - 1) < 1e-4  # fp32 dense: only summation order differs
