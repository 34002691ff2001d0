"""`ember eval kv`: continuation scoring through the serving engine against the model's own
no-cache forward (the oracle), method parsing, and the command end to end."""

from __future__ import annotations

import json
import re

import pytest
import torch

from ember import LLM
from ember.cli import main
from ember.eval.kv.continuation import continuation_nll
from ember.eval.kv.methods import KVMethod
from ember.eval.kv.retrieval import passkey_cases
from ember.eval.nll import token_nll
from ember.kernels.attention import AttentionMetadata

CONTEXT, STEPS = 96, 24


@pytest.fixture(scope="module")
def windows(ember_lm, topics_text):
    ids = ember_lm.tokenizer.encode(topics_text[:20_000])
    return [ids[i * 200:i * 200 + CONTEXT + STEPS] for i in range(3)]


def forward_nll(model, window: list[int]) -> torch.Tensor:
    """The oracle: one no-cache forward over the window, NLL of tokens CONTEXT..end."""
    hidden = model(torch.tensor(window), torch.arange(len(window)), AttentionMetadata.no_cache([len(window)]))
    return token_nll(model, hidden[CONTEXT - 1:-1], torch.tensor(window[CONTEXT:]))


@pytest.mark.parametrize("options", [{}, pytest.param({"fused_decode": "off"}, marks=pytest.mark.slow),
                                     {"kv_press": "snapkv:0"}])
def test_continuation_equals_the_no_cache_forward(ember_lm, windows, options):
    """Uncompressed, teacher-forced decoding through the engine (chunked prefill, paged cache, the
    fused step or the PyTorch path; a press that removes nothing) scores each token as one
    forward over the whole window does."""
    llm = LLM(loaded=ember_lm, kv_cache_tokens=2048, threads=2, max_num_batched_tokens=64, **options)
    result = continuation_nll(llm, windows, CONTEXT)
    expected = torch.cat([forward_nll(ember_lm.model, w) for w in windows]).mean()
    assert result.tokens_scored == len(windows) * STEPS and result.windows == len(windows)
    assert abs(result.nll_mean - float(expected)) < 1e-3
    assert result.held_blocks_mean == -(-(CONTEXT + 1) // 16)
    assert llm.engine.kv.pool.num_used_blocks == 0


def test_a_press_changes_the_score_and_what_is_held(ember_lm, windows):
    llm = LLM(loaded=ember_lm, kv_cache_tokens=2048, threads=2, kv_press="streaming:0.5")
    pressed = continuation_nll(llm, windows, CONTEXT)
    plain = continuation_nll(LLM(loaded=ember_lm, kv_cache_tokens=2048, threads=2), windows, CONTEXT)
    assert pressed.held_blocks_mean == -(-(CONTEXT // 2 + 1) // 16)
    assert pressed.nll_mean != plain.nll_mean


@pytest.mark.parametrize("spec, codec, press", [("auto", "auto", ""), ("kivi4", "kivi4", ""),
                                                ("snapkv:0.75", "auto", "snapkv:0.75"),
                                                ("kivi4+snapkv:0.5", "kivi4", "snapkv:0.5")])
def test_method_names(spec, codec, press):
    method = KVMethod.parse(spec)
    assert (method.codec, method.press) == (codec, press) and method.name == spec


@pytest.mark.parametrize("spec, message", [("nope", "'nope' is neither"), ("kivi4+kivi2", "'kivi2' is neither"),
                                           ("snapkv:1.5", r"in \[0, 1\)"), ("snapkv+tova", "'tova' is neither")])
def test_bad_method_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        KVMethod.parse(spec)


def test_passkey_prompts_have_the_length_and_the_key_asked_for(ember_lm, topics_text):
    tok = ember_lm.tokenizer
    cases = passkey_cases(tok, topics_text, [256, 512], [0.0, 1.0], 2)
    assert len(cases) == 8 and len({c.key for c in cases}) == 8
    for case in cases:
        assert len(case.prompt_token_ids) == case.length
        text = tok.decode(case.prompt_token_ids)
        assert text.count(case.key) == 2 and text.endswith("The pass key is")
    early, late = (tok.decode(c.prompt_token_ids).index(c.key) for c in (cases[0], cases[2]))
    assert early < 300 < late


def test_eval_kv_command(tmp_path, capsys):
    """The command end to end on a tiny configuration: a table, JSON with every method, a PNG."""
    out, png = tmp_path / "kv.json", tmp_path / "kv.png"
    assert main(["eval", "kv", "--methods", "auto,kivi4,streaming:0.5", "--context", "64", "--continuation", "8",
                 "--windows", "1", "--passkey-lengths", "256", "--passkey-depths", "0.5", "--passkey-per-cell", "1",
                 "--threads", "2", "--output", str(out), "--plot", str(png)]) == 0
    data = json.loads(out.read_text())
    assert [r["method"] for r in data["results"]] == ["auto", "kivi4", "streaming:0.5"]
    auto, kivi, streaming = data["results"]
    assert streaming["compression_vs_bf16"] > auto["compression_vs_bf16"]
    # counted from the bytes in the default 1 GiB, not the blocks this short run allocated
    assert streaming["sequences_fit"] > auto["sequences_fit"] > 100
    assert all(0 <= r["passkey"]["accuracy"] <= 1 and r["perplexity"] > 1 for r in data["results"])
    assert png.stat().st_size > 10_000
    assert "streaming:0.5" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [(["--methods", "zzz"], "'zzz' is neither"),
                                           (["--context", "0"], "--context must be at least 1"),
                                           (["--continuation", "1"], "--continuation must be at least 2"),
                                           (["--passkey-depths", "2"], r"must lie in \[0, 1\]")])
def test_eval_kv_bad_arguments(argv, message, capsys):
    assert main(["eval", "kv", *argv]) == 2
    assert re.search(message, capsys.readouterr().err)
