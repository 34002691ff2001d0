"""Llama 3.1-3.3's JSON tool syntax: the assistant turn is one bare JSON object,

    {"name": "get_weather", "parameters": {"city": "Paris"}}

with the arguments under "parameters". Meta's templates render one call per assistant turn
(they raise on more), so this syntax holds output to a single call. (Llama's built-in tools,
written after <|python_tag|>, are a different syntax and not served here.)"""

from __future__ import annotations

import re

from ember.serve.tool_syntaxes.base import TOOL_SYNTAXES, ToolSyntax


@TOOL_SYNTAXES.register("llama3-json")
class Llama3Json(ToolSyntax):
    name, opening, key = "llama3-json", "{", "parameters"
    first = r"\s*"
    between = r"(?!)"  # never: one call per turn
    tail = ""
    parallel = False

    def detect(self, template: str) -> bool:
        return re.search(r"\btools\b", template) is not None and '"parameters"' in template

    def calls_text(self, calls) -> str:
        return "\n".join(self.call_json(name, args) for name, args in calls)

    def calls_rule(self, several: bool) -> list[str]:
        return ["calls: call", "call: call_json"]
