"""Every bad request gets its status and an OpenAI-shaped error body; none leaves a block held."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.serve.conftest import assert_no_leak

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "Hello"}]


def assert_error(response: httpx.Response, status: int, param: str | None = "", code: str | None = "") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if param != "":
        assert error["param"] == param
    if code != "":
        assert error["code"] == code
    return error


BAD_VALUES = [
    (COMPLETIONS, {"prompt": [1, "a"]}, "prompt"),  # no pydantic union tags in the name
    (COMPLETIONS, {"prompt": [[1, 2], [3, "a"]]}, "prompt"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": -5}, "max_tokens"),
    (CHAT, {"messages": USER, "max_tokens": 0}, "max_tokens"),
    (CHAT, {"messages": USER, "max_completion_tokens": -1}, "max_completion_tokens"),
    (CHAT, {"messages": USER, "temperature": 2.5}, "temperature"),
    (COMPLETIONS, {"prompt": "x", "temperature": -0.1}, "temperature"),
    (CHAT, {"messages": USER, "top_p": 0}, "top_p"),
    (CHAT, {"messages": USER, "top_p": 1.5}, "top_p"),
    (CHAT, {"messages": USER, "n": 0}, "n"),
    (CHAT, {"messages": USER, "n": 1000}, "n"),
    (CHAT, {"messages": USER, "presence_penalty": 3}, "presence_penalty"),
    (COMPLETIONS, {"prompt": "x", "logprobs": 21}, "logprobs"),
    (CHAT, {"messages": USER, "top_logprobs": 3}, "top_logprobs"),  # without logprobs: true
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    (CHAT, {"messages": [{"role": "user"}]}, "messages[0].content"),
    (CHAT, {}, "messages"),
    (COMPLETIONS, {}, "prompt"),
    (COMPLETIONS, {"prompt": ""}, "prompt"),
    (COMPLETIONS, {"prompt": []}, "prompt"),
    (COMPLETIONS, {"prompt": [1, 2, 10**9]}, "prompt"),
    (COMPLETIONS, {"prompt": "x", "stop_token_ids": [-1]}, "stop_token_ids"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": "many"}, "max_tokens"),
    (COMPLETIONS, {"prompt": "x", "stream": "yes please"}, "stream"),
    (COMPLETIONS, {"prompt": "x", "no_such_field": 1}, "no_such_field"),
    (CHAT, {"messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    # strict types, as OpenAI: a string is not a number, nor a boolean
    (COMPLETIONS, {"prompt": "x", "max_tokens": "16"}, "max_tokens"),
    (CHAT, {"messages": USER, "max_completion_tokens": "16"}, "max_completion_tokens"),
    (CHAT, {"messages": USER, "temperature": "0.5"}, "temperature"),
    (CHAT, {"messages": USER, "n": 1.5}, "n"),
    (CHAT, {"messages": USER, "stream": "true"}, "stream"),
    (CHAT, {"messages": USER, "logprobs": 1}, "logprobs"),
    (COMPLETIONS, {"prompt": "x", "seed": "7"}, "seed"),
    (COMPLETIONS, {"prompt": "x", "echo": "false"}, "echo"),
]


def test_huge_top_k_is_off_not_a_failed_step(server):
    """top_k beyond the vocabulary (even beyond int64) samples from all tokens; it must not fail
    the engine step, which would fail every request in the batch."""
    r = server.post(COMPLETIONS, content=b'{"prompt": "x", "max_tokens": 2, "top_k": 1180591620717411303424}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert server.async_engine.last_error is None
    assert_no_leak(server)


@pytest.mark.parametrize("path,body,param", BAD_VALUES, ids=[f"{p[-16:]}-{b}" for p, b, _ in BAD_VALUES])
def test_invalid_values_are_400(server, path, body, param):
    assert_error(server.post(path, json=body), 400, param=param)


UNSUPPORTED = [
    (CHAT, {"messages": USER, "logit_bias": {"1": 5}}, "logit_bias"),
    (CHAT, {"messages": USER, "tools": [{"type": "web_search", "function": {"name": "f"}}]}, "tools[0].type"),
    (COMPLETIONS, {"prompt": "x", "guided_decoding_backend": "xgrammar"}, "guided_decoding_backend"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    (COMPLETIONS, {"prompt": "x", "suffix": "end"}, "suffix"),
    (COMPLETIONS, {"prompt": "x", "best_of": 3}, "best_of"),
]


@pytest.mark.parametrize("path,body,param", UNSUPPORTED, ids=[p for _, _, p in UNSUPPORTED])
def test_unsupported_fields_are_400_that_say_so(server, path, body, param):
    error = assert_error(server.post(path, json=body), 400, param=param, code="unsupported_parameter")
    assert "not supported" in error["message"]


def test_allowed_off_values_pass(server):
    r = server.post(CHAT, json={"messages": USER, "max_tokens": 2, "tools": None, "response_format": {"type": "text"},
                                "logit_bias": {}, "tool_choice": "none"})
    assert r.status_code == 200, r.text


def test_lone_surrogate_is_replaced(server):
    """A lone UTF-16 surrogate is valid JSON but no UTF-8: it becomes U+FFFD (OpenAI's way), never a 500."""
    body = b'{"messages": [{"role": "user", "content": "hi \\udcff there"}], "max_tokens": 2, "stop": ["\\ud800"]}'
    r = server.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    body = b'{"prompt": ["a\\udcff", "\\ud83d\\ude00 b"], "max_tokens": 2}'  # a valid pair stays one emoji
    r = server.post(COMPLETIONS, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert_no_leak(server)


def test_malformed_json(server):
    r = server.post(COMPLETIONS, content=b'{"prompt": "x", ', headers={"content-type": "application/json"})
    assert_error(r, 400, code="invalid_json")
    r = server.post(COMPLETIONS, content=b'[1, 2]', headers={"content-type": "application/json"})
    assert_error(r, 400)
    r = server.post(COMPLETIONS, content=b"prompt=x")  # not JSON at all
    assert_error(r, 400)


def test_context_length(make_server):
    with make_server(max_model_len=64) as s:
        limit = s.engine.max_model_len
        assert limit == 64
        ids = [100] * (limit - 4)
        error = assert_error(s.post(COMPLETIONS, json={"prompt": ids, "max_tokens": 10}), 400,
                             param="max_tokens", code="context_length_exceeded")
        assert str(limit) in error["message"]
        assert_error(s.post(COMPLETIONS, json={"prompt": [100] * limit}), 400, code="context_length_exceeded")
        long_chat = [{"role": "user", "content": "word " * 100}]
        assert_error(s.post(CHAT, json={"messages": long_chat}), 400, code="context_length_exceeded")
        ok = s.post(COMPLETIONS, json={"prompt": ids, "max_tokens": 4, "temperature": 0})  # exactly fits
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 4
        no_limit = s.post(COMPLETIONS, json={"prompt": ids[:-10], "temperature": 0, "ignore_eos": True})
        assert no_limit.json()["usage"]["completion_tokens"] == 14  # the default 16, capped by the context
        assert_no_leak(s)


def test_unknown_model_and_route(server):
    assert_error(server.post(CHAT, json={"model": "gpt-17", "messages": USER}), 404, param="model",
                 code="model_not_found")
    assert_error(httpx.get(server.base_url + "/v1/nothing"), 404)
    assert_error(server.post("/v1/embeddings", json={"input": "x"}), 404)
    assert_error(httpx.get(server.base_url + CHAT), 405)
    # the openai client raises its own typed errors from these bodies
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="gpt-17", messages=USER)
    with pytest.raises(openai.BadRequestError) as info:
        server.client().chat.completions.create(model=server.model, messages=USER, temperature=7)
    assert info.value.body["param"] == "temperature"


def test_api_key(make_server):
    with make_server(api_key="s3cret") as s:
        assert_error(s.post(CHAT, json={"messages": USER}), 401, code="invalid_api_key")
        assert_error(s.post(CHAT, json={"messages": USER}, headers={"Authorization": "Bearer wrong"}), 401)
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        assert s.client().chat.completions.create(model=s.model, messages=USER, max_tokens=2).usage.completion_tokens
        assert httpx.get(s.base_url + "/health").status_code == 200  # health stays open for probes


def test_body_too_large(make_server):
    with make_server(max_request_bytes="2KiB") as s:
        big = {"prompt": "word " * 1000, "max_tokens": 1}
        assert_error(s.post(COMPLETIONS, json=big), 413, code="request_too_large")

        def chunks():  # no Content-Length: the limit still holds while reading
            yield b'{"prompt": "'
            for _ in range(100):
                yield b"x" * 100
            yield b'"}'
        assert_error(s.post(COMPLETIONS, content=chunks(), headers={"content-type": "application/json"}), 413)
        assert s.post(COMPLETIONS, json={"prompt": "small", "max_tokens": 1}).status_code == 200
        assert_no_leak(s)


def test_queue_full_is_503(make_server):
    with make_server(max_num_seqs=1, max_waiting=1) as s:
        client = s.client()
        long = dict(model=s.model, prompt="Once upon a time", max_tokens=400, extra_body={"ignore_eos": True})
        running = client.completions.create(stream=True, **long)
        next(iter(running))  # it is running now
        waiting_result = {}
        t = threading.Thread(target=lambda: waiting_result.setdefault(
            "r", s.post(COMPLETIONS, json={"prompt": "Hi", "max_tokens": 2})))
        t.start()
        deadline = time.monotonic() + 30
        while s.async_engine.num_waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.async_engine.num_waiting == 1
        assert_error(s.post(COMPLETIONS, json={"prompt": "Hi", "max_tokens": 2}), 503, code="queue_full")
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model=s.model, prompt="Hi", max_tokens=2)
        running.close()  # the long one goes; the waiting one now runs to completion
        t.join(60)
        assert waiting_result["r"].status_code == 200
        # a batch that could never wait at once is a 400 (retrying would not help), not a 503
        error = assert_error(s.post(COMPLETIONS, json={"prompt": ["Hi", "Yo"], "max_tokens": 2}), 400, param="prompt")
        assert "--max-waiting" in error["message"]
        assert_no_leak(s)


def test_no_leak_after_errors(server):
    assert_no_leak(server)


def test_engine_failure_fails_its_requests_not_the_server(make_server):
    """A step that raises (a fault injected into the model runner) ends the requests in it with a
    500 (or an error event mid-stream); the server keeps serving and no block stays held."""
    with make_server() as s:
        runner = s.engine.runner

        def broken(*args, **kwargs):
            raise RuntimeError("injected fault")

        runner.execute = broken
        try:
            error = assert_error(s.post(COMPLETIONS, json={"prompt": "Hi", "max_tokens": 3}), 500)
            assert "injected fault" in error["message"] and error["type"] == "server_error"
            streamed = s.post(COMPLETIONS, json={"prompt": "Hi", "max_tokens": 3, "stream": True})
            assert streamed.status_code == 200
            events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
            assert '"error"' in events[0] and events[-1] == "[DONE]"
        finally:
            del runner.execute
        assert s.post(COMPLETIONS, json={"prompt": "Hi", "max_tokens": 3}).status_code == 200
        assert s.async_engine.is_alive()
        assert_no_leak(s)


def test_failure_while_adding_fails_that_request_not_the_engine_thread(server):
    """A fault while the engine thread takes a request in (not a bad value: a bug) answers 500
    at once instead of leaving the request waiting forever on a dead thread."""
    engine = server.engine

    def broken(*args, **kwargs):
        raise RuntimeError("injected add fault")

    engine.add_request = broken
    try:
        error = assert_error(server.post(COMPLETIONS, json={"prompt": "Hi", "max_tokens": 3}), 500)
        assert "injected add fault" in error["message"]
    finally:
        del engine.add_request
    assert server.post(COMPLETIONS, json={"prompt": "Hi", "max_tokens": 3}).status_code == 200
    assert server.async_engine.is_alive()
    assert_no_leak(server)
