"""Tool-call syntaxes, registered by name (`ember serve --tool-syntax`): how calls look in the
model's output, the grammar that holds it there, and the parser that reads them back."""

from ember.serve.tool_syntaxes.base import TOOL_SYNTAXES, CallEvent, ToolCallParser, ToolSyntax, new_call_id
from ember.serve.tool_syntaxes import hermes, llama3_json  # noqa: F401  (register the syntaxes)

GENERIC = "hermes"  # what templates without a tool syntax of their own are rendered with


def template_syntax(template: str | None) -> ToolSyntax | None:
    """The syntax a chat template renders tools in itself, or None (the generic rendering)."""
    if not template:
        return None
    for name in TOOL_SYNTAXES.names():
        syntax = TOOL_SYNTAXES.create(name)
        if syntax.detect(template):
            return syntax
    return None


def get_tool_syntax(name: str) -> ToolSyntax:
    return TOOL_SYNTAXES.create(name)


__all__ = ["TOOL_SYNTAXES", "GENERIC", "CallEvent", "ToolCallParser", "ToolSyntax", "get_tool_syntax",
           "new_call_id", "template_syntax"]
