"""Ember's tokenizer, detokenizer and chat template against transformers' (the oracle) on the same GGUF."""

from __future__ import annotations

import pytest

from ember.loader.chat_template import ChatTemplateError, render_chat

from .corpus import TRICKY

# Texts whose bytes the byte-level decoder must reproduce exactly (no special tokens).
ROUND_TRIP = [t for t in TRICKY if "<|" not in t]

MULTIBYTE = [
    "日本語のテキストと漢字、中文文本，한국어 텍스트。",
    "Emoji: 😀 🎉🎉 👍🏽 ❤️ ✨ ZWJ: 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 e\u0301 a\u0300\u0301 Ελληνικά 🧑🏿‍🚀",
]

CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "What is the capital of France?"}],
    "with_system": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name three colours."},
    ],
    "multi_turn": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke.\nMake it short."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "Why?"},
    ],
    "unicode": [
        {"role": "system", "content": "Réponds en français 🇫🇷."},
        {"role": "user", "content": "日本語で答えて: 👩‍💻 は何ですか？ \"quotes\" and {braces}"},
    ],
    "empty_content": [{"role": "user", "content": ""}],
}


@pytest.fixture(scope="module")
def tok(ember_lm):
    return ember_lm.tokenizer


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_ids_match_transformers(tok, hf_tokenizer, text):
    # Without special tokens added, and with each side's default (BOS or not, per the metadata).
    assert tok.encode(text, add_bos=False) == hf_tokenizer.encode(text, add_special_tokens=False)
    assert tok.encode(text) == hf_tokenizer.encode(text)


def test_ids_match_transformers_on_long_real_text(tok, hf_tokenizer, topics_text):
    text = topics_text[:50_000]
    assert tok.encode(text) == hf_tokenizer.encode(text)


def test_special_tokens_in_text_are_single_tokens(tok):
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    start, end = tok.tokenizer.token_to_id("<|im_start|>"), tok.tokenizer.token_to_id("<|im_end|>")
    assert ids[0] == start and ids[-1] == end
    assert ids.count(start) == 1 and ids.count(end) == 1
    assert tok.eos_token_id == end  # SmolLM2-Instruct ends a turn with <|im_end|>
    assert tok.eos_token_id in tok.stop_token_ids


def test_bos_eos_match_transformers(tok, hf_tokenizer):
    assert tok.bos_token_id == hf_tokenizer.bos_token_id
    assert tok.eos_token_id == hf_tokenizer.eos_token_id
    assert tok.vocab_size == len(hf_tokenizer)


@pytest.mark.parametrize("text", ROUND_TRIP, ids=range(len(ROUND_TRIP)))
def test_decode_round_trip(tok, hf_tokenizer, text):
    ids = tok.encode(text, add_bos=False)
    assert tok.decode(ids) == text
    assert tok.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("skip", [True, False])
def test_decode_special_tokens_matches_transformers(tok, hf_tokenizer, skip):
    text = "<|im_start|>user\nHi 👋<|im_end|>\n<|im_start|>assistant\nHello<|endoftext|>"
    ids = tok.encode(text)
    decoded = tok.decode(ids, skip_special_tokens=skip)
    assert decoded == hf_tokenizer.decode(ids, skip_special_tokens=skip)
    assert (decoded == text) == (not skip)
    assert ("<|im_start|>" in decoded) == (not skip)


def _stream(tok, ids) -> tuple[str, list[str]]:
    detok = tok.detokenizer()
    deltas = [detok.add(i) for i in ids]
    deltas.append(detok.flush())
    return "".join(deltas), deltas


@pytest.mark.parametrize("text", MULTIBYTE, ids=["cjk", "emoji", "mixed"])
def test_incremental_detokenizer_equals_full_decode(tok, text):
    ids = tok.encode(text, add_bos=False)
    # The case under test must occur: some token holds only part of a character.
    assert any("\ufffd" in tok.decode([i]) for i in ids), "no multi-byte character split across tokens"
    streamed, deltas = _stream(tok, ids)
    assert streamed == tok.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas), "a partial character was emitted"


@pytest.mark.parametrize("text", MULTIBYTE[:2], ids=["cjk", "emoji"])
def test_incremental_detokenizer_every_prefix(tok, text):
    # Generation can stop anywhere, also in the middle of a character: the deltas plus the
    # final flush must always equal decoding the ids so far in one go.
    ids = tok.encode(text, add_bos=False)
    for k in range(len(ids) + 1):
        streamed, _ = _stream(tok, ids[:k])
        assert streamed == tok.decode(ids[:k]), f"prefix of {k} tokens"


def test_incremental_detokenizer_skips_special_tokens(tok):
    ids = tok.encode("<|im_start|>assistant\n日本 😀<|im_end|>")
    streamed, _ = _stream(tok, ids)
    assert streamed == tok.decode(ids) == "assistant\n日本 😀"


def test_gguf_carries_chat_template(tok, hf_tokenizer):
    assert tok.chat_template
    assert tok.chat_template == hf_tokenizer.chat_template


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_chat_template_matches_transformers(tok, hf_tokenizer, name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    ours = render_chat(
        tok.chat_template,
        messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=tok.token_str(tok.bos_token_id),
        eos_token=tok.token_str(tok.eos_token_id),
    )
    theirs = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == theirs
    assert ours.endswith("<|im_start|>assistant\n") == add_generation_prompt
    # And the rendered prompt tokenizes the same way.
    assert tok.encode(ours) == hf_tokenizer.encode(theirs)


def test_chat_template_rejects_empty_conversation(tok):
    with pytest.raises(ChatTemplateError, match="empty"):
        render_chat(tok.chat_template, [])


def test_chat_template_raise_exception_surfaces(tok):
    template = ("{% if messages[0]['role'] != 'user' %}"
                "{{ raise_exception('first message must be from the user') }}{% endif %}ok")
    assert render_chat(template, [{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(ChatTemplateError, match="first message must be from the user"):
        render_chat(template, [{"role": "assistant", "content": "x"}])
