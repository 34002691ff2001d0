"""Completions and chat through the real openai client: shapes, streaming, n, logprobs, echo, stop, seed."""

from __future__ import annotations

import pytest

from ember import SamplingParams
from tests.serve.conftest import assert_no_leak

PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "Name three colours."}]


def test_models_health_version(server):
    client = server.client()
    models = client.models.list()
    assert [m.id for m in models.data] == [server.model]
    assert server.model == "SmolLM2-135M-Instruct.Q4_1"
    assert server.post("/health", json={}).status_code in (404, 405)  # GET only
    import httpx
    assert httpx.get(server.base_url + "/health").json() == {"status": "ok"}
    from ember import __version__
    assert httpx.get(server.base_url + "/version").json() == {"version": __version__}


def test_completion_greedy_matches_offline_engine(server, ember_lm):
    from ember import LLM
    client = server.client()
    r = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=12, temperature=0)
    offline = LLM(loaded=ember_lm, kv_cache_tokens=1024, threads=2).generate(
        PROMPT, SamplingParams(temperature=0, max_tokens=12))[0].outputs[0]
    assert r.choices[0].text == offline.text
    assert r.choices[0].finish_reason == "length"
    n_prompt = len(ember_lm.tokenizer.encode(PROMPT))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, 12, n_prompt + 12)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert_no_leak(server)


def test_completion_prompt_forms(server, ember_lm):
    """A string, a list of strings, token ids and a list of token-id lists are the same prompts."""
    client = server.client()
    ids = ember_lm.tokenizer.encode(PROMPT)
    texts = []
    for prompt in (PROMPT, ids):
        r = client.completions.create(model=server.model, prompt=prompt, max_tokens=6, temperature=0)
        texts.append(r.choices[0].text)
    many = client.completions.create(model=server.model, prompt=[PROMPT, "One, two,"], max_tokens=6, temperature=0)
    many_ids = client.completions.create(model=server.model, prompt=[ids, ember_lm.tokenizer.encode("One, two,")],
                                         max_tokens=6, temperature=0)
    assert texts[0] == texts[1] == many.choices[0].text == many_ids.choices[0].text
    assert many.choices[1].text == many_ids.choices[1].text
    assert [c.index for c in many.choices] == [0, 1]
    assert many.usage.completion_tokens == 12
    assert many.usage.prompt_tokens == len(ids) + len(ember_lm.tokenizer.encode("One, two,"))


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_stream_equals_non_stream_greedy(server, endpoint):
    client = server.client()
    if endpoint == "completions":
        args = dict(model=server.model, prompt=PROMPT, max_tokens=24, temperature=0)
        full = client.completions.create(**args)
        chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **args))
        streamed = "".join(c.choices[0].text for c in chunks if c.choices)
        text, reason = full.choices[0].text, full.choices[0].finish_reason
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        args = dict(model=server.model, messages=MESSAGES, max_tokens=24, temperature=0)
        full = client.chat.completions.create(**args)
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
        assert chunks[0].choices[0].delta.role == "assistant"
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        text, reason = full.choices[0].message.content, full.choices[0].finish_reason
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(text) > 0
    assert streamed == text
    assert reasons == [reason]
    assert chunks[-1].usage is not None and not chunks[-1].choices  # the usage chunk comes last
    assert chunks[-1].usage.model_dump() == full.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_matches_engine_chat_template(server, ember_lm):
    from ember import LLM
    client = server.client()
    r = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=16, temperature=0)
    llm = LLM(loaded=ember_lm, kv_cache_tokens=1024, threads=2)
    offline = llm.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=16))[0]
    assert r.choices[0].message.content == offline.outputs[0].text
    assert r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(offline.prompt_token_ids)
    assert r.usage.completion_tokens == len(offline.outputs[0].token_ids)


def test_chat_text_parts_and_system(server):
    client = server.client()
    plain = client.chat.completions.create(
        model=server.model, max_tokens=8, temperature=0,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    parts = client.chat.completions.create(
        model=server.model, max_tokens=8, temperature=0,
        messages=[{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                  {"role": "user", "content": [{"type": "text", "text": "Hello"}]}])
    assert plain.choices[0].message.content == parts.choices[0].message.content
    assert plain.usage.prompt_tokens == parts.usage.prompt_tokens


def test_n2_and_seed_reproducible(server):
    client = server.client()
    args = dict(model=server.model, messages=MESSAGES, max_tokens=16, temperature=1.0, n=2, seed=1234,
                extra_body={"ignore_eos": True})
    a = client.chat.completions.create(**args)
    b = client.chat.completions.create(**args)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.choices[0].message.content != a.choices[1].message.content  # siblings differ
    assert a.usage.completion_tokens == 32  # both sequences count
    c = client.chat.completions.create(**{**args, "seed": 99})
    assert [x.message.content for x in c.choices] != [x.message.content for x in a.choices]
    streamed = list(client.chat.completions.create(stream=True, **args))
    texts = ["", ""]
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [x.message.content for x in a.choices]
    assert_no_leak(server)


def test_completion_logprobs_and_echo(server, ember_lm):
    client = server.client()
    r = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and token in top
        assert max(top.values()) == pytest.approx(value)  # greedy: the chosen token is the most likely
        assert len(top) == 3
    assert "".join(lp.tokens) == r.choices[0].text
    echo = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=1,
                                     echo=True)
    e = echo.choices[0]
    n_prompt = len(ember_lm.tokenizer.encode(PROMPT))
    assert e.text == PROMPT + r.choices[0].text
    assert len(e.logprobs.tokens) == n_prompt + 4
    assert e.logprobs.token_logprobs[0] is None and e.logprobs.top_logprobs[0] is None
    assert e.logprobs.token_logprobs[n_prompt:] == pytest.approx(lp.token_logprobs, abs=1e-4)
    assert e.logprobs.text_offset[:3] == [0, 3, 11]  # "The", " capital", " of"
    # the prompt logprobs are the model's own: log p(token | prefix) from one forward pass
    import torch
    ids = ember_lm.tokenizer.encode(PROMPT)
    from ember.kernels.attention import AttentionMetadata
    hidden = ember_lm.model(torch.tensor(ids), torch.arange(len(ids)), AttentionMetadata.no_cache([len(ids)]))
    logprobs = ember_lm.model.compute_logits(hidden).log_softmax(-1)
    expected = [float(logprobs[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    assert e.logprobs.token_logprobs[1:n_prompt] == pytest.approx(expected, abs=1e-3)


def test_chat_logprobs(server):
    client = server.client()
    r = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=5, temperature=0,
                                       logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token or "\ufffd" in entry.token
    plain = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=5, temperature=0)
    assert plain.choices[0].logprobs is None


def test_stop_strings(server):
    client = server.client()
    base = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=12, temperature=0)
    text = base.choices[0].text
    stop = text[3:6]  # cut the greedy text in the middle: likely across a token boundary
    assert len(stop) == 3
    r = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].text == text[:text.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model=server.model, prompt=PROMPT, max_tokens=12, temperature=0,
                                            stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text


def test_ignore_eos_and_extras(server):
    client = server.client()
    r = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "Say hi."}],
                                       max_tokens=40, temperature=0, extra_body={"ignore_eos": True, "top_k": 5,
                                                                                 "min_p": 0.01})
    assert r.usage.completion_tokens == 40 and r.choices[0].finish_reason == "length"
    short = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "Say hi."}],
                                           max_completion_tokens=3, temperature=0)
    assert short.usage.completion_tokens == 3


def test_user_is_kept_on_the_request(server):
    """`user` reaches the engine's Request (fair scheduling keys on it)."""
    seen = []
    engine = server.engine
    original = engine.add_request

    def spy(prompt, params=None, request_id=None, user=None, **kwargs):
        seen.append(user)
        return original(prompt, params, request_id=request_id, user=user, **kwargs)

    engine.add_request = spy
    try:
        server.client().completions.create(model=server.model, prompt="Hi", max_tokens=2, user="alice")
    finally:
        del engine.add_request
    assert seen == ["alice"]
