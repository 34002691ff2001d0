"""Tool calling: the tools and tool turns into the prompt, a grammar for the call, the calls back out.

The format (Hermes', which Qwen2.5 and many others also use) is rendered for templates that
have no tool syntax of their own (the default model's), and the grammar holds every model to
it whatever its template, so the parser below always reads it:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

- tool definitions: a system message (added, or appended to the first one) lists them, one JSON
  object per line between <tools> and </tools>, and shows the call format above;
- an assistant turn with `tool_calls`: its content, then one such block per call;
- `tool` turns: a user turn holding each result between <tool_response> and </tool_response>.

A template that renders `tools` in this same format (it mentions `tools` and `<tool_call>`, as
Qwen2.5's does) gets them, and the tool turns with arguments as objects, itself; a template
with another tool syntax gets the generic rendering, so prompt and grammar agree.

tool_choice `required`: the output is one call (several with parallel_tool_calls, the default)
and nothing else; a named function: exactly one call of it; each call's arguments constrained by the function's
JSON schema. `auto`: either plain text that does not start with "<", or calls as above.
`none` (the default without tools): tools are not shown and the output is free.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from ember.serve.errors import bad_request
from ember.structured import StructuredOutputsParams
from ember.structured.backend import JSON_FORMAT  # the same JSON layout as response_format

OPEN, CLOSE = "<tool_call>", "</tool_call>"
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ANY_OBJECT = {"type": "object"}

SYSTEM_TOOLS = """# Tools

You may call one or more functions to assist with the user query. You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


@dataclass
class ToolSetup:
    mode: str  # none | auto | required | named
    tools: list[dict] = field(default_factory=list)  # OpenAI tool objects, as dicts
    named: str | None = None
    parallel: bool = True

    @property
    def active(self) -> bool:
        return self.mode != "none"


def tool_setup(body) -> ToolSetup:
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    names = []
    for i, t in enumerate(tools):
        if t["type"] != "function":
            raise bad_request(f"tools[{i}].type {t['type']!r} is not supported (function only)",
                              param=f"tools[{i}].type", code="unsupported_parameter")
        fn = t["function"]
        if not NAME_RE.match(fn["name"]):
            raise bad_request(f"tools[{i}].function.name {fn['name']!r} must be 1-64 letters, digits, _ . or -",
                              param=f"tools[{i}].function.name")
        if fn["name"] in names:
            raise bad_request(f"tools[{i}].function.name {fn['name']!r} appears twice", param=f"tools[{i}].function.name")
        names.append(fn["name"])
    choice = body.tool_choice
    if choice is None:
        choice = "auto" if tools else "none"
    named = None
    if isinstance(choice, dict):
        fn = choice.get("function") if choice.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_request('tool_choice must be "none", "auto", "required" or '
                              '{"type": "function", "function": {"name": ...}}', param="tool_choice")
        named, choice = fn["name"], "named"
        if named not in names:
            raise bad_request(f"tool_choice names {named!r}, which is not among the tools", param="tool_choice")
    elif choice not in ("none", "auto", "required"):
        raise bad_request(f'tool_choice {choice!r} is not one of: "none", "auto", "required", or a named function',
                          param="tool_choice")
    if choice != "none" and not tools:
        raise bad_request(f"tool_choice {choice!r} needs tools", param="tool_choice")
    parallel = True if body.parallel_tool_calls is None else body.parallel_tool_calls
    return ToolSetup(choice, tools, named, parallel)


# --- the prompt -----------------------------------------------------------------------------------
def template_has_tools(template: str | None) -> bool:
    """The template renders tools itself, in the format the grammar holds output to (Hermes',
    as Qwen2.5's does). A template with another tool syntax gets the generic rendering, so
    that what the prompt asks for and what the grammar allows agree."""
    return bool(template) and re.search(r"\btools\b", template) is not None and OPEN in template


def _arguments(text: str, where: str):
    try:
        return json.loads(text)
    except ValueError:
        raise bad_request(f"{where} is not valid JSON", param=where) from None


def _call_block(name: str, arguments) -> str:
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CLOSE}"


def render_generic(messages: list[dict], setup: ToolSetup) -> list[dict]:
    """Messages (role, content, tool_calls, tool) -> plain role/content turns in the format above."""
    out: list[dict] = []
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": True})
            continue
        content = m["content"] or ""
        if m.get("tool_calls"):
            blocks = [_call_block(c["function"]["name"],
                                  _arguments(c["function"]["arguments"], f"messages[{i}].tool_calls[{j}].function.arguments"))
                      for j, c in enumerate(m["tool_calls"])]
            content = "\n".join(([content] if content else []) + blocks)
        out.append({"role": m["role"], "content": content})
    for m in out:
        m.pop("_tool", None)
    if setup.active:
        text = SYSTEM_TOOLS.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in setup.tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{text}" if out[0]["content"] else text}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def render_native(messages: list[dict]) -> list[dict]:
    """For a template with its own tool syntax: arguments as objects (what HF templates expect)."""
    out = []
    for i, m in enumerate(messages):
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{"id": c["id"], "type": "function",
                                "function": {"name": c["function"]["name"],
                                             "arguments": _arguments(c["function"]["arguments"],
                                                                     f"messages[{i}].tool_calls[{j}].function.arguments")}}
                               for j, c in enumerate(m["tool_calls"])]
        else:
            m.pop("tool_calls", None)
        out.append(m)
    return out


# --- the grammar ----------------------------------------------------------------------------------
def _call_schema(fn: dict) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
            "properties": {"name": {"const": fn["name"]}, "arguments": fn.get("parameters") or ANY_OBJECT}}


def tool_grammar(setup: ToolSetup) -> StructuredOutputsParams | None:
    """A Lark grammar (llguidance's dialect, JSON schemas inlined with %json) for the calls."""
    if not setup.active:
        return None
    fns = [t["function"] for t in setup.tools if setup.mode != "named" or t["function"]["name"] == setup.named]
    schemas = [_call_schema(fn) for fn in fns]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    schema = dict(schema, **{"x-guidance": JSON_FORMAT})
    # a newline may follow the last call (where a model trained on ChatML wants to end its turn)
    calls = 'calls: call ("\\n" call)* "\\n"?' if setup.parallel and setup.mode != "named" else "calls: call"
    lines = [
        "start: calls" if setup.mode in ("required", "named") else "start: calls | TEXT",
        calls,
        f'call: "{OPEN}\\n" call_json "\\n{CLOSE}"',
        f"call_json: %json {json.dumps(schema)}",
    ]
    if setup.mode == "auto":
        lines.append("TEXT: /[^<](?s:.*)/")  # plain text: anything that does not begin a call
    return StructuredOutputsParams(grammar="\n".join(lines))


# --- the output -----------------------------------------------------------------------------------
def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


_HEAD = re.compile(r'\s*<tool_call>\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*', re.S)
_TAIL = re.compile(r"\s*\}\s*</tool_call>", re.S)


@dataclass
class CallEvent:
    """A piece of a tool call as the stream hands it out: first its name, then argument text."""
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class ToolCallParser:
    """Reads the model's text as it grows: content, or tool calls in the format above.

    `feed(text)` returns (content delta, [CallEvent]); `calls` holds every call so far as
    {"id", "name", "arguments"}. In `auto` mode the text is held back only while it could
    still be the start of a call ("<tool_c..."); text that begins otherwise is content."""

    def __init__(self, mode: str):
        self.mode = mode
        self.state = "start" if mode == "auto" else "calls"
        self.buf = ""
        self.pos = 0
        self.calls: list[dict] = []
        self.content = ""
        self.complete = 0  # calls whose closing tag arrived
        self._depth = 0
        self._in_string = self._escape = False

    def feed(self, text: str) -> tuple[str, list[CallEvent]]:
        self.buf += text
        if self.state == "start":  # as the grammar: calls begin at once, anything else is text
            head = self.buf
            if not head or OPEN.startswith(head):
                return "", []
            if not head.startswith(OPEN):
                self.state = "content"
                out, self.buf = self.buf, ""
                self.content += out
                return out, []
            self.state = "calls"
        if self.state == "content":
            out, self.buf = self.buf, ""
            self.content += out
            return out, []
        return "", self._scan()

    def _scan(self) -> list[CallEvent]:
        events = []
        while True:
            rest = self.buf[self.pos:]
            if self.state == "calls":
                m = _HEAD.match(rest)
                if m is None:
                    return events
                self.pos += m.end()
                call = {"id": new_call_id(), "name": json.loads(m.group(1)), "arguments": ""}
                self.calls.append(call)
                events.append(CallEvent(len(self.calls) - 1, call["id"], call["name"]))
                self.state, self._depth, self._in_string, self._escape = "args", 0, False, False
            elif self.state == "args":
                if not self.calls[-1]["arguments"]:  # whitespace before the value is not part of it
                    skip = len(rest) - len(rest.lstrip())
                    self.pos, rest = self.pos + skip, rest[skip:]
                taken = self._take_arguments(rest)
                if taken:
                    self.calls[-1]["arguments"] += taken
                    events.append(CallEvent(len(self.calls) - 1, arguments=taken))
                    self.pos += len(taken)
                if self._depth or not self.calls[-1]["arguments"]:
                    return events
                self.state = "tail"
            elif self.state == "tail":
                m = _TAIL.match(rest)
                if m is None:
                    return events
                self.pos += m.end()
                self.complete += 1
                self.state = "calls"

    def _take_arguments(self, rest: str) -> str:
        """The argument text up to where the arguments' JSON value closes (objects and arrays)."""
        for i, ch in enumerate(rest):
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return rest[:i + 1]
        return rest

    def finish(self) -> str:
        """At the end: text held back that turned out not to be a call, as content."""
        if self.state == "start" and self.buf:
            self.content += self.buf
            out, self.buf = self.buf, ""
            return out
        return ""

    @property
    def is_calls(self) -> bool:
        return bool(self.calls)


def parse_tool_calls(text: str, mode: str) -> tuple[str | None, list[dict]]:
    """A whole output -> (content, calls): the complete calls, or the text as content when there
    is none (output cut by max_tokens inside its first call)."""
    p = ToolCallParser(mode)
    p.feed(text)
    p.finish()
    if not p.complete:
        return text, []
    return None, p.calls[:p.complete]


def openai_tool_calls(calls: list[dict]) -> list[dict]:
    return [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls]
