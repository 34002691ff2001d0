"""The ToolSyntax seam: how one family of models writes a tool call, and a parser that reads it.

A syntax says, as regular expressions over the model's text, what comes before a call's name
(`first` for the first call, `between` for each later one), the JSON key that holds its
arguments (`key`), and what closes a call (`tail`); `opening` is the text a call begins with
(in `auto` mode, output that cannot begin so is plain content). It also gives the grammar rule
that holds output to that shape (`calls_rule`) and, for history, the text of a call.
Whatever the syntax, arguments are one JSON value, so the parser streams them as they grow.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from ember.registry import Registry

NAME = r'("(?:[^"\\]|\\.)*")'  # a JSON string: the function's name


class ToolSyntax:
    name = ""
    opening = ""  # the text every first call begins with
    first = ""  # regex before the first call's name
    between = ""  # regex before a later call's name
    key = "arguments"  # the JSON key holding the arguments
    tail = ""  # regex after the arguments' value
    parallel = True  # the syntax (and the models trained on it) can hold several calls in one turn

    def detect(self, template: str) -> bool:
        """The chat template renders `tools` and tool calls in this syntax itself."""
        raise NotImplementedError

    def call_json(self, name: str, arguments) -> str:
        return json.dumps({"name": name, self.key: arguments}, ensure_ascii=False)

    def calls_text(self, calls: list[tuple[str, object]]) -> str:
        """An assistant turn's calls as the model would have written them."""
        raise NotImplementedError

    def calls_rule(self, several: bool) -> list[str]:
        """Lark rules defining `calls` from `call_json` (one call's JSON object)."""
        raise NotImplementedError

    def head_pattern(self, later: bool) -> re.Pattern:
        lead = self.between if later else self.first
        return re.compile(lead + r'\{\s*"name"\s*:\s*' + NAME + r'\s*,\s*"' + self.key + r'"\s*:\s*', re.S)

    def tail_pattern(self) -> re.Pattern:
        return re.compile(r"\s*\}" + self.tail, re.S)


TOOL_SYNTAXES: Registry[ToolSyntax] = Registry("tool syntax")


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class CallEvent:
    """A piece of a tool call as the stream hands it out: first its name, then argument text."""
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class ToolCallParser:
    """Reads the model's text as it grows: content, or tool calls in `syntax`.

    `feed(text)` returns (content delta, [CallEvent]); `calls` holds every call so far as
    {"id", "name", "arguments"}, `complete` how many of them were closed. In `auto` mode the
    text is held back only while it could still be the start of a call; text that begins
    otherwise is content (as the grammar allows: calls begin at once)."""

    def __init__(self, syntax: ToolSyntax, mode: str):
        self.syntax, self.mode = syntax, mode
        self._first, self._later, self._tail = syntax.head_pattern(False), syntax.head_pattern(True), syntax.tail_pattern()
        self.state = "start" if mode == "auto" else "calls"
        self.buf = ""
        self.pos = 0
        self.calls: list[dict] = []
        self.content = ""
        self.complete = 0
        self._depth = 0
        self._in_string = self._escape = False

    def feed(self, text: str) -> tuple[str, list[CallEvent]]:
        self.buf += text
        if self.state == "start":
            opening = self.syntax.opening
            if not self.buf or opening.startswith(self.buf):
                return "", []
            if not self.buf.startswith(opening):
                self.state = "content"
            else:
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
                m = (self._later if self.calls else self._first).match(rest)
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
                m = self._tail.match(rest)
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
