"""Chunks marked on both routes, precomputed through POST /v1/chunks, and counted in /metrics,
through the real openai client against a real server."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.serve.conftest import assert_no_leak

QUESTION = "Which of the passages above talks about classes?"


@pytest.fixture(scope="module")
def documents(topics_text) -> list[str]:
    return [topics_text[40_000 + i * 7_000:40_000 + i * 7_000 + 300] for i in range(3)]


def metric(server, name: str) -> float:
    text = httpx.get(server.base_url + "/metrics").text
    m = re.search(rf"^ember:{name}(?:_total)? (\S+)$", text, re.M)
    assert m, f"ember:{name} is not in /metrics"
    return float(m.group(1))


def test_precomputed_documents_are_found_by_chat_parts_in_any_order(server, documents):
    r = server.post("/v1/chunks", json={"documents": documents})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["documents"] == 3 and report["computed"] + report["already_cached"] == 3
    assert report["seconds"] >= 0 and report["tokens"] > 0
    again = server.post("/v1/chunks", json={"documents": documents[:1]}).json()
    assert again["already_cached"] == 1 and again["tokens_computed"] == 0
    hits = metric(server, "chunk_cache_hits")
    parts = [{"type": "text", "text": d, "cache_control": {"type": "chunk"}} for d in reversed(documents)]
    r = server.client().chat.completions.create(
        model=server.model, max_tokens=8, temperature=0,
        messages=[{"role": "system", "content": "Answer from the passages."},
                  {"role": "user", "content": parts + [{"type": "text", "text": QUESTION}]}])
    assert r.choices[0].message.content and r.usage.prompt_tokens > 3 * 40
    assert metric(server, "chunk_cache_hits") - hits == 3
    assert metric(server, "chunk_cache_bytes") > 0 and metric(server, "chunk_cache_blends") >= 1
    assert_no_leak(server)


def test_completions_take_documents_streamed_or_not(server, documents):
    client = server.client()
    blends = metric(server, "chunk_cache_blends")
    r = client.completions.create(model=server.model, prompt="\n" + QUESTION, max_tokens=6, temperature=0,
                                  extra_body={"documents": documents[1:]})
    assert r.usage.prompt_tokens > 2 * 40
    text = "".join(c.choices[0].text for c in client.completions.create(
        model=server.model, prompt="\n" + QUESTION + " ", max_tokens=6, temperature=0, stream=True,
        extra_body={"documents": documents[:2]}))
    assert text
    assert metric(server, "chunk_cache_blends") - blends == 2
    assert_no_leak(server)


def test_bad_chunk_marks_get_a_400_naming_the_field(server, documents):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=server.model, max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "text", "text": "x", "cache_control": {"type": "forever"}}]}])
    assert e.value.body["param"] == "messages[0].content[0].cache_control"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=server.model, prompt="q", max_tokens=2, extra_body={"documents": ["a", ""]})
    assert e.value.body["param"] == "documents"
    r = server.post("/v1/chunks", json={"documents": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "documents"
    r = server.post("/v1/chunks", json={"documents": ["ok", 3]})
    assert r.status_code == 400
    assert_no_leak(server)
