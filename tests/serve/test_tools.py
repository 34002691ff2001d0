"""The tool-call format without a server: rendering, the grammar's text, and the parser fed in pieces."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from ember.serve.inputs import chat_prompt
from ember.serve.protocol import ChatCompletionRequest
from ember.serve.tool_syntaxes import get_tool_syntax
from ember.serve.tools import ToolSetup, parse_tool_calls, render_generic, tool_grammar, tool_setup
from ember.structured.backend import GrammarBackend

ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
NOTE = {"type": "function", "function": {"name": "note", "parameters": {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}
TWO_CALLS = ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
             '<tool_call>\n{"name": "note", "arguments": {"text": "a } \\" { ]"}}\n</tool_call>')


def feed_in_pieces(text: str, mode: str, seed: int, syntax: str = "hermes"):
    rng = random.Random(seed)
    p, content, events, i = ToolSetup(mode, syntax=get_tool_syntax(syntax)).parser(), "", [], 0
    while i < len(text):
        j = i + rng.randint(1, 5)
        c, e = p.feed(text[i:j])
        content, i = content + c, j
        events += e
    content += p.finish()
    return p, content, events


@pytest.mark.parametrize("seed", range(5))
def test_parser_pieces_equal_whole(seed):
    p, content, events = feed_in_pieces(TWO_CALLS, "required", seed)
    assert content == "" and p.complete == 2
    assert [c["name"] for c in p.calls] == ["add", "note"]
    assert json.loads(p.calls[0]["arguments"]) == {"a": 1, "b": 2}
    assert json.loads(p.calls[1]["arguments"]) == {"text": 'a } " { ]'}
    # the events rebuild the same calls: a name first, then argument text
    rebuilt = {}
    for e in events:
        if e.name is not None:
            rebuilt[e.index] = {"id": e.id, "name": e.name, "arguments": e.arguments}
        else:
            rebuilt[e.index]["arguments"] += e.arguments
    assert list(rebuilt.values()) == p.calls
    assert parse_tool_calls(TWO_CALLS, ToolSetup("auto"))[1][1]["arguments"] == p.calls[1]["arguments"]


@pytest.mark.parametrize("seed", range(3))
def test_parser_auto_content(seed):
    for text in ("Hello there, <b>friend</b>", "<tool", "  no calls", "<div>", " " + TWO_CALLS):
        p, content, events = feed_in_pieces(text, "auto", seed)
        assert content == text and not events and not p.calls
        assert parse_tool_calls(text, ToolSetup("auto")) == (text, [])
    truncated = '<tool_call>\n{"name": "add", "arguments": {"a": 1'
    assert parse_tool_calls(truncated, ToolSetup("auto"), "stop") == (truncated, [])
    # cut by max_tokens: the call as far as it got, as the stream sent it
    content, calls = parse_tool_calls(truncated, ToolSetup("auto"), "length")
    assert content is None and [(c["name"], c["arguments"]) for c in calls] == [("add", '{"a": 1')]
    cut = TWO_CALLS[:TWO_CALLS.rindex("}}")]
    content, calls = parse_tool_calls(cut, ToolSetup("required"), "length")
    assert [c["name"] for c in calls] == ["add", "note"] and calls[1]["arguments"] == cut[cut.rindex('{"text"'):]
    assert [c["name"] for c in parse_tool_calls(cut, ToolSetup("required"), "stop")[1]] == ["add"]


def test_render_generic_history():
    setup = ToolSetup("auto", [ADD])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "3"},
                {"role": "tool", "tool_call_id": "c2", "content": "4"}]
    out = render_generic(messages, setup)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.\n\n# Tools") and json.dumps(ADD) in out[0]["content"]
    assert out[2]["content"] == '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    assert out[3]["content"] == "<tool_response>\n3\n</tool_response>\n<tool_response>\n4\n</tool_response>"
    assert "# Tools" not in render_generic(messages, ToolSetup("none", [ADD]))[0]["content"]


def test_native_template_gets_tools(ember_lm):
    """A template with its own tool syntax renders the tools and the calls (arguments as objects)."""
    template = ("{% if tools %}TOOLS {{ tools | tojson }} <tool_call>\n{% endif %}{% for m in messages %}{{ m.role }}: "
                "{% if m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c.function.name }} "
                "{{ c.function.arguments | tojson }}{% endfor %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}")
    tok = dataclasses.replace(ember_lm.tokenizer, chat_template=template)
    body = ChatCompletionRequest(messages=[
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "3"}], tools=[ADD])
    text = tok.decode(chat_prompt(body, tok, tool_setup(body, tok.chat_template)).token_ids, skip_special_tokens=False)
    assert text.startswith("TOOLS [{")
    assert 'assistant: CALL add {"a": 1, "b": 2}' in text and "tool: 3" in text
    # another tool syntax (no <tool_call> in the template): the generic rendering instead
    other = dataclasses.replace(ember_lm.tokenizer, chat_template=template.replace(" <tool_call>", ""))
    text = other.decode(chat_prompt(body, other).token_ids, skip_special_tokens=False)
    assert "TOOLS" not in text and "# Tools" in text and "<tool_response>\n3\n</tool_response>" in text


def test_tool_grammars_compile(ember_lm):
    backend = GrammarBackend(ember_lm.tokenizer, ember_lm.config.vocab_size)
    for mode, parallel in (("auto", True), ("required", True), ("required", False), ("named", True)):
        setup = ToolSetup(mode, [ADD, NOTE], "note" if mode == "named" else None, parallel)
        matcher = backend.compile(tool_grammar(setup)).matcher()
        text = TWO_CALLS if parallel and mode != "named" else TWO_CALLS.split("\n<tool_call>", 1)[0]
        if mode == "named":
            text = TWO_CALLS[TWO_CALLS.index("<tool_call>", 1):]
        for t in ember_lm.tokenizer.encode(text):
            assert matcher.advance(t), (mode, parallel)
        assert matcher.is_accepting
    auto = backend.compile(tool_grammar(ToolSetup("auto", [ADD]))).matcher()
    for t in ember_lm.tokenizer.encode("Just text."):
        assert auto.advance(t)
    required = backend.compile(tool_grammar(ToolSetup("required", [ADD]))).matcher()
    assert not required.advance(ember_lm.tokenizer.encode("Just")[0])


# A template in Llama 3.1-3.3's tool style (written for this test, after the shape of Meta's):
# tools in the first user turn, a call as bare JSON with "parameters", results in ipython turns,
# one call per assistant turn.
LLAMA3_STYLE = (
    "{% for m in messages %}"
    "{% if loop.first and tools %}TOOLS: Respond with {\"name\": function name, \"parameters\": dictionary}."
    "{% for t in tools %} {{ t | tojson }}{% endfor %}\n{% endif %}"
    "{% if m.tool_calls %}{% if m.tool_calls | length != 1 %}{{ raise_exception('one call per turn') }}{% endif %}"
    "assistant: {\"name\": \"{{ m.tool_calls[0].function.name }}\", \"parameters\": "
    "{{ m.tool_calls[0].function.arguments | tojson }}}\n"
    "{% elif m.role == 'tool' %}ipython: {{ m.content }}\n{% else %}{{ m.role }}: {{ m.content }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
LLAMA3_CALL = '{"name": "add", "parameters": {"a": 1, "b": 2}}'


def test_llama3_template_detected_and_rendered(ember_lm):
    tok = dataclasses.replace(ember_lm.tokenizer, chat_template=LLAMA3_STYLE)
    body = ChatCompletionRequest(messages=[
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "3"}], tools=[ADD])
    setup = tool_setup(body, tok.chat_template)
    assert setup.syntax.name == "llama3-json" and setup.native and not setup.several
    text = tok.decode(chat_prompt(body, tok, setup).token_ids, skip_special_tokens=False)
    assert text.startswith("TOOLS: Respond") and f"assistant: {LLAMA3_CALL}\nipython: 3\n" in text
    assert "<tool_call>" not in text and "# Tools" not in text
    # two calls in one turn: the template itself refuses, a 400 naming messages
    two = body.model_copy(update={"messages": body.messages[:1] + [body.messages[1].model_copy(update={
        "tool_calls": body.messages[1].tool_calls * 2})]})
    with pytest.raises(Exception, match="one call per turn"):
        chat_prompt(two, tok, setup)
    # the Hermes-style template of test_native_template_gets_tools is not taken for Llama's
    assert tool_setup(body, "{{ tools }} <tool_call>").syntax.name == "hermes"
    # --tool-syntax forces a syntax on a template that renders tools; one without tools stays generic
    assert tool_setup(body, LLAMA3_STYLE, "hermes").syntax.name == "hermes"
    plain = tool_setup(body, "{% for m in messages %}{{ m.content }}{% endfor %}", "llama3-json")
    assert plain.syntax.name == "hermes" and not plain.native


@pytest.mark.parametrize("seed", range(3))
def test_llama3_parser_and_grammar(ember_lm, seed):
    p, content, events = feed_in_pieces(" " + LLAMA3_CALL, "required", seed, "llama3-json")
    assert content == "" and p.complete == 1 and p.calls[0]["name"] == "add"
    assert json.loads(p.calls[0]["arguments"]) == {"a": 1, "b": 2}
    for text in ("The answer is 3.", "[1, 2]"):
        p, content, events = feed_in_pieces(text, "auto", seed, "llama3-json")
        assert content == text and not p.calls
    backend = GrammarBackend(ember_lm.tokenizer, ember_lm.config.vocab_size)
    llama = get_tool_syntax("llama3-json")
    for mode in ("required", "auto", "named"):
        setup = ToolSetup(mode, [ADD, NOTE], "add" if mode == "named" else None, syntax=llama)
        matcher = backend.compile(tool_grammar(setup)).matcher()
        assert all(matcher.advance(t) for t in ember_lm.tokenizer.encode(LLAMA3_CALL)) and matcher.is_accepting
        # one call per turn, and (but as auto's plain text) the Hermes shape is not accepted
        assert not matcher.advance(ember_lm.tokenizer.encode(";")[0]) or not matcher.is_accepting
        hermes = backend.compile(tool_grammar(setup)).matcher()
        assert all(hermes.advance(t) for t in ember_lm.tokenizer.encode(TWO_CALLS[:30])) == (mode == "auto")
    auto = backend.compile(tool_grammar(ToolSetup("auto", [ADD], syntax=llama))).matcher()
    assert all(auto.advance(t) for t in ember_lm.tokenizer.encode("No call needed."))
