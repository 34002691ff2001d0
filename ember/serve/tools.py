"""Tool calling: the tools and tool turns into the prompt, a grammar for the calls, the calls back out.

How a call looks is a tool syntax (`ember/serve/tool_syntaxes/`): a chat template that renders
`tools` in a syntax it knows (Hermes' <tool_call> blocks as Qwen2.5's, or Llama 3's bare JSON)
gets the tools, the calls (arguments as objects) and the tool turns itself, and output is held
to that syntax. A template with no tool syntax of its own (the default model's), or one Ember
does not know, gets the generic rendering in Hermes' syntax:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

- tool definitions: a system message (added, or appended to the first one) lists them, one JSON
  object per line between <tools> and </tools>, and shows the call format above;
- an assistant turn with `tool_calls`: its content, then one such block per call;
- `tool` turns: a user turn holding each result between <tool_response> and </tool_response>.
`ember serve --tool-syntax NAME` overrides the detection.

tool_choice `required`: the output is one call (several with parallel_tool_calls, the default,
where the syntax allows) and nothing else; a named function: exactly one call of it; each call's
arguments constrained by the function's JSON schema. `auto`: either plain text that does not
begin like a call, or calls as above. `none` (the default without tools): tools are not shown
and the output is free.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ember.serve.errors import bad_request
from ember.structured import StructuredOutputsParams
from ember.serve.tool_syntaxes import GENERIC, ToolCallParser, ToolSyntax, get_tool_syntax, template_syntax
from ember.structured.backend import JSON_FORMAT  # the same JSON layout as response_format

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
    syntax: ToolSyntax = field(default_factory=lambda: get_tool_syntax(GENERIC))
    native: bool = False  # the template renders tools in `syntax` itself

    @property
    def active(self) -> bool:
        return self.mode != "none"

    @property
    def several(self) -> bool:
        """More than one call may be made in the turn."""
        return self.parallel and self.syntax.parallel and self.mode != "named"

    def parser(self) -> ToolCallParser:
        return ToolCallParser(self.syntax, self.mode)


def choose_syntax(template: str | None, forced: str | None = None) -> tuple[ToolSyntax, bool]:
    """(syntax, native): for a template that renders `tools` itself, `forced` (a name) or the
    syntax detected in it; for any other (or one in a syntax Ember does not know), the generic
    rendering and its syntax."""
    if forced and forced != "auto" and template and re.search(r"\btools\b", template):
        return get_tool_syntax(forced), True
    syntax = template_syntax(template)
    return (syntax, True) if syntax is not None else (get_tool_syntax(GENERIC), False)


def tool_setup(body, template: str | None = None, forced_syntax: str | None = None) -> ToolSetup:
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
    syntax, native = choose_syntax(template, forced_syntax)
    return ToolSetup(choice, tools, named, parallel, syntax, native)


# --- the prompt -----------------------------------------------------------------------------------
def _arguments(text: str, where: str):
    try:
        return json.loads(text)
    except ValueError:
        raise bad_request(f"{where} is not valid JSON", param=where) from None


def _calls(m: dict, i: int) -> list[tuple[str, object]]:
    return [(c["function"]["name"], _arguments(c["function"]["arguments"], f"messages[{i}].tool_calls[{j}].function.arguments"))
            for j, c in enumerate(m["tool_calls"])]


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
            content = "\n".join(([content] if content else []) + [setup.syntax.calls_text(_calls(m, i))])
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
            m["tool_calls"] = [{"id": c["id"], "type": "function", "function": {"name": name, "arguments": args}}
                               for c, (name, args) in zip(m["tool_calls"], _calls(m, i))]
        else:
            m.pop("tool_calls", None)
        out.append(m)
    return out


# --- the grammar ----------------------------------------------------------------------------------
def _call_schema(fn: dict, key: str) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["name", key],
            "properties": {"name": {"const": fn["name"]}, key: fn.get("parameters") or ANY_OBJECT}}


def tool_grammar(setup: ToolSetup) -> StructuredOutputsParams | None:
    """A Lark grammar (llguidance's dialect, JSON schemas inlined with %json) for the calls."""
    if not setup.active:
        return None
    fns = [t["function"] for t in setup.tools if setup.mode != "named" or t["function"]["name"] == setup.named]
    schemas = [_call_schema(fn, setup.syntax.key) for fn in fns]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    schema = dict(schema, **{"x-guidance": JSON_FORMAT})
    lines = ["start: calls" if setup.mode in ("required", "named") else "start: calls | TEXT",
             *setup.syntax.calls_rule(setup.several),
             f"call_json: %json {json.dumps(schema)}"]
    if setup.mode == "auto":  # plain text: anything that does not begin like a call
        lines.append(f"TEXT: /[^{re.escape(setup.syntax.opening[0])}](?s:.*)/")
    return StructuredOutputsParams(grammar="\n".join(lines))


# --- the output -----------------------------------------------------------------------------------
def parse_tool_calls(text: str, setup: ToolSetup, finish_reason: str | None = None) -> tuple[str | None, list[dict]]:
    """A whole output -> (content, calls). Calls cut short by max_tokens (finish "length") are
    returned as far as they got, as a stream would have sent them; output that is not calls is
    content."""
    p = setup.parser()
    p.feed(text)
    p.finish()
    if finish_reason == "length" and p.calls:
        return None, p.calls
    if p.complete:
        return None, p.calls[:p.complete]
    return text, []


def openai_tool_calls(calls: list[dict]) -> list[dict]:
    return [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls]
