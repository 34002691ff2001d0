"""Hermes' tool syntax (Qwen2.5, Hermes 2/3 and many others), and the generic rendering's:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

one block per call, several in a turn separated by newlines."""

from __future__ import annotations

import re

from ember.serve.tool_syntaxes.base import TOOL_SYNTAXES, ToolSyntax

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@TOOL_SYNTAXES.register("hermes")
class Hermes(ToolSyntax):
    name, opening = "hermes", OPEN
    first = between = r"\s*<tool_call>\s*"
    tail = r"\s*</tool_call>"

    def detect(self, template: str) -> bool:
        return re.search(r"\btools\b", template) is not None and OPEN in template

    def calls_text(self, calls) -> str:
        return "\n".join(f"{OPEN}\n{self.call_json(name, args)}\n{CLOSE}" for name, args in calls)

    def calls_rule(self, several: bool) -> list[str]:
        # a newline may follow the last call (where a model trained on ChatML wants to end its turn)
        return ['calls: call ("\\n" call)* "\\n"?' if several else "calls: call",
                f'call: "{OPEN}\\n" call_json "\\n{CLOSE}"']
