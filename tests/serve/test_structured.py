"""Structured outputs and tool calling through the real openai client against a real server."""

from __future__ import annotations

import json
import re
import threading

import pydantic
import pytest

from tests.engine.test_structured import PERSON, check_person
from tests.serve.conftest import assert_no_leak
from tests.serve.test_errors import CHAT, COMPLETIONS, USER, assert_error

ASK_PERSON = [{"role": "user", "content": "Describe a person as JSON."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["c", "f"]}}}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "required": ["a", "b"],
                   "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_weather_args(arguments: str) -> dict:
    args = json.loads(arguments)
    assert set(args) == {"city", "unit"} and isinstance(args["city"], str) and args["unit"] in ("c", "f")
    return args


def test_response_format_json_schema_and_object(server):
    client = server.client()
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    r = client.chat.completions.create(model=server.model, messages=ASK_PERSON, response_format=rf, max_tokens=48,
                                       temperature=0.8, seed=1, n=2)
    for choice in r.choices:
        check_person(choice.message.content)
        assert choice.finish_reason == "stop"
    r = client.chat.completions.create(model=server.model, messages=ASK_PERSON, max_tokens=64, temperature=0,
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "length" or isinstance(json.loads(r.choices[0].message.content), dict)
    # completions take response_format too (as vLLM's do)
    r = client.completions.create(model=server.model, prompt="A person in JSON:", max_tokens=48, temperature=0,
                                  extra_body={"response_format": rf})
    check_person(r.choices[0].text)
    assert_no_leak(server)


def test_chat_completions_parse_with_pydantic(server):
    class City(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=24)
        population: int = pydantic.Field(ge=0)

    r = server.client().chat.completions.parse(
        model=server.model, messages=[{"role": "user", "content": "Name a city and its population."}],
        response_format=City, max_tokens=40, temperature=0)
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and city.population >= 0
    assert_no_leak(server)


def test_vllm_extras(server):
    client = server.client()
    r = client.completions.create(model=server.model, prompt="Is water wet?", max_tokens=8, temperature=1.0,
                                  extra_body={"guided_choice": ["yes", "no"]})
    assert r.choices[0].text in ("yes", "no")
    regex = r"[A-Z][a-z]{2,8} [0-9]{1,2}"
    r = client.completions.create(model=server.model, prompt="A date:", max_tokens=12, temperature=1.0, seed=2,
                                  extra_body={"guided_regex": regex})
    assert re.fullmatch(regex, r.choices[0].text), r.choices[0].text
    r = client.chat.completions.create(model=server.model, messages=ASK_PERSON, max_tokens=48, temperature=0,
                                       extra_body={"guided_json": PERSON})
    check_person(r.choices[0].message.content)
    r = client.chat.completions.create(model=server.model, messages=USER, max_tokens=8, temperature=0,
                                       extra_body={"structured_outputs": {"choice": ["red", "green"]}})
    assert r.choices[0].message.content in ("red", "green")
    grammar = 'start: "(" NUM ("+" NUM)* ")"\nNUM: /[0-9]{1,3}/'
    r = client.completions.create(model=server.model, prompt="1+2 =", max_tokens=16, temperature=0,
                                  extra_body={"guided_grammar": grammar})
    assert r.choices[0].finish_reason == "length" or re.fullmatch(r"\([0-9]{1,3}(\+[0-9]{1,3})*\)",
                                                                  r.choices[0].text)
    # streamed, the pieces make the same constrained text
    pieces = [c.choices[0].text for c in client.completions.create(
        model=server.model, prompt="Is water wet?", max_tokens=8, temperature=0, stream=True,
        extra_body={"guided_choice": ["yes", "no"]}) if c.choices]
    assert "".join(pieces) in ("yes", "no")
    assert_no_leak(server)


BAD_STRUCTURED = [
    (CHAT, {"messages": USER, "response_format": {"type": "json_schema",
                                                   "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format"),
    (CHAT, {"messages": USER, "response_format": {"type": "json_schema"}}, "response_format"),
    (CHAT, {"messages": USER, "response_format": {"type": "xml"}}, "response_format"),
    (CHAT, {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}, "strict": "yes"}}}, "response_format"),
    (COMPLETIONS, {"prompt": "x", "guided_json": 42}, "guided_json"),
    (COMPLETIONS, {"prompt": "x", "guided_json": "[]"}, "guided_json"),
    (COMPLETIONS, {"prompt": "x", "guided_json": {"$ref": "http://127.0.0.1:9/schema.json"}}, "guided_json"),  # never fetched
    (COMPLETIONS, {"prompt": "x", "guided_regex": "a(b"}, "guided_regex"),
    (COMPLETIONS, {"prompt": "x", "guided_grammar": "start: nowhere"}, "guided_grammar"),
    (COMPLETIONS, {"prompt": "x", "guided_json": "{not json"}, "guided_json"),
    (COMPLETIONS, {"prompt": "x", "guided_choice": []}, "guided_choice"),
    (COMPLETIONS, {"prompt": "x", "guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
    (COMPLETIONS, {"prompt": "x", "structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    (CHAT, {"messages": USER, "tool_choice": "auto"}, "tool_choice"),
    (CHAT, {"messages": USER, "tools": [ADD], "tool_choice": "sometimes"}, "tool_choice"),
    (CHAT, {"messages": USER, "tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    (CHAT, {"messages": USER, "tools": [ADD, ADD]}, "tools[1].function.name"),
    (CHAT, {"messages": USER, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "nonsense"}}}], "tool_choice": "required"}, "tools"),
    (CHAT, {"messages": USER, "tools": [ADD], "response_format": {"type": "json_object"}}, "response_format"),
    (CHAT, {"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
    (CHAT, {"messages": USER + [{"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{oops"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    # the deprecated functions / function_call
    (CHAT, {"messages": [{"role": "function", "content": "42", "name": "f"}]}, "messages[0].role"),
    (CHAT, {"messages": USER, "functions": [ADD["function"]], "tools": [ADD]}, "functions"),
    (CHAT, {"messages": USER, "functions": [ADD["function"]], "function_call": "always"}, "function_call"),
    (CHAT, {"messages": USER, "functions": [ADD["function"]], "function_call": {"name": 3}}, "function_call"),
    (CHAT, {"messages": USER, "function_call": "auto"}, "function_call"),
    (CHAT, {"messages": USER, "functions": [{"name": "f", "parameters": {"type": "nonsense"}}],
            "function_call": {"name": "f"}}, "tools"),
    (CHAT, {"messages": USER, "functions": [{"nom": "f"}]}, "functions[0].name"),
    (CHAT, {"messages": [{"role": "user", "content": "x", "function_call": {"name": "f", "arguments": "{}"}}]},
     "messages[0].function_call"),
]


@pytest.mark.parametrize("path,body,param", BAD_STRUCTURED, ids=[f"{p}-{i}" for i, (_, _, p) in
                                                                  enumerate(BAD_STRUCTURED)])
def test_bad_structured_requests_are_400(server, path, body, param):
    assert_error(server.post(path, json=dict(body, max_tokens=4)), 400, param=param)
    assert_no_leak(server)


def test_unknown_structured_option_is_unsupported(server):
    assert_error(server.post(COMPLETIONS, json={"prompt": "x", "structured_outputs": {"structural_tag": "x"}}), 400,
                 param="structured_outputs", code="unsupported_parameter")


def test_tool_choice_required_parses(server):
    client = server.client()
    r = client.chat.completions.create(model=server.model, messages=ASK_WEATHER, tools=[WEATHER, ADD],
                                       tool_choice="required", parallel_tool_calls=False, max_tokens=60,
                                       temperature=0.8, seed=4, n=2)
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert choice.message.content is None
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in ("get_weather", "add")
        if call.function.name == "get_weather":
            check_weather_args(call.function.arguments)
        else:
            args = json.loads(call.function.arguments)
            assert isinstance(args["a"], int) and isinstance(args["b"], int)
    assert_no_leak(server)


def reassemble(stream) -> tuple[dict, str | None, str]:
    """Tool calls from streamed deltas, OpenAI's way: by index; id, name once, arguments appended."""
    calls, finish, content = {}, None, ""
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for d in choice.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
                if d.id:
                    assert call["id"] is None
                    call["id"] = d.id
                if d.function and d.function.name:
                    call["name"] = d.function.name
                if d.function and d.function.arguments:
                    call["arguments"] += d.function.arguments
            finish = choice.finish_reason or finish
    return calls, finish, content


def test_streamed_tool_call_deltas_reassemble(server):
    client = server.client()
    kwargs = dict(model=server.model, messages=ASK_WEATHER, tools=[WEATHER, ADD], max_tokens=60, temperature=0,
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    whole = client.chat.completions.create(**kwargs).choices[0]
    calls, finish, content = reassemble(client.chat.completions.create(stream=True, **kwargs))
    assert finish == whole.finish_reason == "tool_calls" and content == ""
    assert [c["name"] for c in calls.values()] == [c.function.name for c in whole.message.tool_calls] == ["get_weather"]
    assert calls[0]["arguments"] == whole.message.tool_calls[0].function.arguments
    check_weather_args(calls[0]["arguments"])
    assert calls[0]["id"].startswith("call_")
    assert_no_leak(server)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip(server, stream):
    """Call, tool result in the history, final answer."""
    client = server.client()
    first = client.chat.completions.create(model=server.model, messages=ASK_WEATHER, tools=[WEATHER],
                                           tool_choice="required", parallel_tool_calls=False, max_tokens=40,
                                           temperature=0)
    call = first.choices[0].message.tool_calls[0]
    history = ASK_WEATHER + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "clear"})},
    ]
    kwargs = dict(model=server.model, messages=history, tools=[WEATHER], max_tokens=24, temperature=0)
    if stream:
        calls, finish, content = reassemble(client.chat.completions.create(stream=True, **kwargs))
        whole = client.chat.completions.create(**kwargs).choices[0]
        assert finish == whole.finish_reason
        if whole.message.tool_calls:  # cut by max_tokens inside a call too: what the stream sent
            assert [c["arguments"] for c in calls.values()] == [c.function.arguments for c in whole.message.tool_calls]
        else:
            assert content == whole.message.content and not calls
    else:
        answer = client.chat.completions.create(**kwargs).choices[0]
        assert answer.finish_reason in ("stop", "length", "tool_calls")
        assert answer.message.content or answer.message.tool_calls
        # the same history with tool_choice none: plain text
        free = client.chat.completions.create(tool_choice="none", **kwargs).choices[0]
        assert free.message.tool_calls is None and free.finish_reason in ("stop", "length")
    assert_no_leak(server)


def test_auto_is_text_or_valid_calls(server):
    client = server.client()
    for seed in range(3):
        r = client.chat.completions.create(model=server.model, messages=ASK_WEATHER, tools=[WEATHER], max_tokens=40,
                                           temperature=1.0, seed=seed)
        msg = r.choices[0].message
        if msg.tool_calls:
            assert r.choices[0].finish_reason in ("tool_calls", "length")
            for c in msg.tool_calls:
                check_weather_args(c.function.arguments)
        else:
            assert msg.content and not msg.content.startswith("<")
    assert_no_leak(server)


def test_constrained_and_free_batched_together(server):
    """Concurrent requests share steps: the free ones are what they are alone, the others valid."""
    client = server.client()

    def free():
        return client.completions.create(model=server.model, prompt="The capital of France is", max_tokens=12,
                                         temperature=0).choices[0].text

    alone = free()
    results, errors = {}, []

    def run(i):
        try:
            if i % 2:
                results[i] = free()
            else:
                results[i] = client.chat.completions.create(
                    model=server.model, messages=ASK_PERSON, max_tokens=48, temperature=0.8, seed=i,
                    response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
                ).choices[0].message.content
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for i, text in results.items():
        if i % 2:
            assert text == alone
        else:
            check_person(text)
    assert_no_leak(server)


@pytest.mark.parametrize("stream", [False, True])
def test_deprecated_functions_round_trip(server, stream):
    """functions / function_call (OpenAI's deprecated form): a call in message.function_call with
    finish_reason "function_call", then the result as a function message, then an answer."""
    client = server.client()
    kwargs = dict(model=server.model, messages=ASK_WEATHER, functions=[WEATHER["function"]],
                  function_call={"name": "get_weather"}, max_tokens=40, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0]
    assert whole.finish_reason == "function_call" and whole.message.tool_calls is None
    call = whole.message.function_call
    assert call.name == "get_weather"
    check_weather_args(call.arguments)
    if stream:
        name, arguments, finish = None, "", None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            for choice in chunk.choices:
                assert not choice.delta.tool_calls
                if choice.delta.function_call:
                    assert name is None or choice.delta.function_call.name is None
                    name = name or choice.delta.function_call.name
                    arguments += choice.delta.function_call.arguments or ""
                finish = choice.finish_reason or finish
        assert (name, arguments, finish) == (call.name, call.arguments, "function_call")
    history = ASK_WEATHER + [{"role": "assistant", "content": None, "function_call": call.model_dump()},
                             {"role": "function", "name": "get_weather", "content": '{"temperature": 21}'}]
    answer = client.chat.completions.create(model=server.model, messages=history, functions=[WEATHER["function"]],
                                            function_call="none", max_tokens=16, temperature=0).choices[0]
    assert answer.message.content and answer.message.function_call is None
    assert_no_leak(server)


def test_llama3_template_served_in_its_own_syntax(ember_lm):
    """A model whose template writes Llama 3's bare-JSON calls gets its prompt and its output in
    that syntax (the prompt shows the template's own rendering; calls come back as tool_calls)."""
    import dataclasses

    from tests.serve.conftest import running_server
    from tests.serve.test_tools import LLAMA3_STYLE

    loaded = dataclasses.replace(ember_lm, tokenizer=dataclasses.replace(ember_lm.tokenizer,
                                                                         chat_template=LLAMA3_STYLE))
    with running_server(loaded, kv_cache_tokens=2048) as server:
        client = server.client()
        kwargs = dict(model=server.model, messages=ASK_WEATHER, tools=[WEATHER, ADD], tool_choice="required",
                      max_tokens=60, temperature=0)
        whole = client.chat.completions.create(**kwargs).choices[0]
        assert whole.finish_reason == "tool_calls"
        (call,) = whole.message.tool_calls  # the syntax holds one call per turn
        assert call.function.name in ("get_weather", "add")
        calls, finish, content = reassemble(client.chat.completions.create(stream=True, **kwargs))
        assert finish == "tool_calls" and content == ""
        assert [(c["name"], c["arguments"]) for c in calls.values()] == [(call.function.name, call.function.arguments)]
        assert_no_leak(server)
