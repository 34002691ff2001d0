"""Clients that go away, many clients at once, and the metrics that show it."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time

import httpx
import openai
import pytest

from tests.serve.conftest import assert_no_leak

LONG = {"prompt": "Once upon a time", "max_tokens": 500, "ignore_eos": True}


def scrape(server) -> dict[str, float]:
    text = httpx.get(server.base_url + "/metrics").text
    values = {}
    for line in text.splitlines():
        m = re.match(r"^(ember:[a-z0-9_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def test_dropped_stream_aborts_and_frees_blocks(server):
    client = server.client()
    stream = client.completions.create(model=server.model, stream=True, prompt=LONG["prompt"], max_tokens=500,
                                       extra_body={"ignore_eos": True})
    pieces = [next(iter(stream)) for _ in range(3)]
    assert pieces
    assert scrape(server)["ember:kv_cache_usage_perc"] > 0
    before = scrape(server).get('ember:request_success_total{finished_reason="abort"}', 0)
    stream.close()  # the client goes away mid-stream
    wait_for(lambda: scrape(server)["ember:kv_cache_usage_perc"] == 0.0)
    m = scrape(server)
    assert m["ember:num_requests_running"] == 0
    assert m['ember:request_success_total{finished_reason="abort"}'] == before + 1
    assert_no_leak(server)


def test_dropped_non_streaming_request_aborts(server):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/v1/completions", json=LONG, timeout=1.5)
    wait_for(lambda: not server.engine.requests)
    assert_no_leak(server)


def test_dropped_socket_mid_stream(server):
    """A raw socket that closes without reading: the server notices and aborts."""
    body = b'{"prompt": "Once upon a time", "max_tokens": 500, "ignore_eos": true, "stream": true}'
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert b"200 OK" in sock.recv(4096)
    wait_for(lambda: server.engine.requests)
    sock.close()
    assert_no_leak(server)


def test_64_concurrent_streams(server):
    async def one(client, i):
        stream = await client.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=8 + i % 5,
            temperature=0.7, seed=i, stream=True, stream_options={"include_usage": True})
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        return text, usage

    async def run():
        async with openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0,
                                      timeout=300) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    before = scrape(server)
    results = asyncio.run(run())
    assert len(results) == 64
    for i, (text, usage) in enumerate(results):
        assert usage is not None and 1 <= usage.completion_tokens <= 8 + i % 5
    after = scrape(server)
    total = sum(u.completion_tokens for _, u in results)
    assert after["ember:generation_tokens_total"] - before["ember:generation_tokens_total"] == total
    assert_no_leak(server)


def test_metrics_names_and_histograms(server):
    server.client().completions.create(model=server.model, prompt="Hello", max_tokens=4, temperature=0)
    m = scrape(server)
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_queries_total",
                 "prefix_cache_hits_total", "prompt_tokens_total", "generation_tokens_total",
                 "num_preemptions_total", "time_to_first_token_seconds_count", "inter_token_latency_seconds_count",
                 "e2e_request_latency_seconds_count", "request_queue_time_seconds_count"):
        assert f"ember:{name}" in m, name
    assert m['ember:request_success_total{finished_reason="length"}'] >= 1
    assert m["ember:time_to_first_token_seconds_count"] >= 1
    assert m["ember:inter_token_latency_seconds_count"] >= 3
    assert m["ember:e2e_request_latency_seconds_sum"] > 0


def test_prefix_cache_hits_show_in_metrics(server):
    system = "You are a helpful assistant who answers in one short sentence. " * 4
    before = scrape(server)
    for q in ("What is rain?", "What is snow?"):
        server.client().chat.completions.create(
            model=server.model, max_tokens=2, messages=[{"role": "system", "content": system},
                                                        {"role": "user", "content": q}])
    after = scrape(server)
    assert after["ember:prefix_cache_hits_total"] - before["ember:prefix_cache_hits_total"] >= 32


def test_access_log_line(server, caplog):
    with caplog.at_level(logging.INFO, logger="ember.access"):
        server.client().completions.create(model=server.model, prompt="Hi", max_tokens=3, temperature=0)
        httpx.get(server.base_url + "/v1/nope")
        # the line is written just after the last byte goes out: the client can be a moment ahead
        wait_for(lambda: any('"GET /v1/nope"' in r.getMessage() for r in caplog.records), timeout=10)
    lines = [r.getMessage() for r in caplog.records if r.name == "ember.access"]
    ok = [line for line in lines if '"POST /v1/completions" 200' in line]
    assert ok and "request_id=cmpl-" in ok[0] and "completion_tokens=3" in ok[0] and "ms" in ok[0]
    assert any('"GET /v1/nope" 404' in line for line in lines)
