"""The deprecated function-calling fields of the chat API, read as tools (OpenAI still takes them):

- `functions` (definitions) -> tools; `function_call` "none" | "auto" | {"name": ...} ->
  tool_choice; one call a turn (parallel_tool_calls false);
- an assistant message's `function_call` -> one tool call; a `function` role message -> the
  tool turn answering the call before it;
- the answer: `message.function_call` {name, arguments} and finish_reason "function_call" in
  place of tool_calls and "tool_calls"; streamed as `delta.function_call` (the name first,
  then argument text).
"""

from __future__ import annotations

from ember.serve.errors import bad_request
from ember.serve.protocol import ChatCompletionRequest, ChatMessage, Tool, ToolCall


def uses_functions(body: ChatCompletionRequest) -> bool:
    return body.functions is not None or body.function_call is not None


def as_tools(body: ChatCompletionRequest) -> ChatCompletionRequest:
    """The same request in tools' terms (messages too: they may carry function turns either way)."""
    update: dict = {"messages": _messages(body.messages)}
    if uses_functions(body):
        if body.tools is not None or body.tool_choice is not None:
            raise bad_request("functions and function_call cannot be combined with tools or tool_choice",
                              param="functions")
        choice = body.function_call
        if isinstance(choice, dict):
            if set(choice) != {"name"} or not isinstance(choice["name"], str):
                raise bad_request('function_call must be "none", "auto" or {"name": ...}', param="function_call")
            choice = {"type": "function", "function": {"name": choice["name"]}}
        elif choice not in (None, "none", "auto"):
            raise bad_request(f'function_call {choice!r} is not one of: "none", "auto", or {{"name": ...}}',
                              param="function_call")
        if choice is not None and choice != "none" and not body.functions:
            raise bad_request("function_call needs functions", param="function_call")
        update.update(tools=[Tool(type="function", function=f) for f in body.functions or []] or None,
                      tool_choice=choice, parallel_tool_calls=False)
    return body.model_copy(update=update)


def _messages(messages: list[ChatMessage]) -> list[ChatMessage]:
    out, last_id = [], None
    for i, m in enumerate(messages):
        if m.function_call is not None:
            if m.role != "assistant" or m.tool_calls:
                raise bad_request(f"messages[{i}].function_call is only allowed on assistant messages without "
                                  "tool_calls", param=f"messages[{i}].function_call")
            last_id = f"call_fn_{i}"
            m = m.model_copy(update={"function_call": None,
                                     "tool_calls": [ToolCall(id=last_id, function=m.function_call)]})
        elif m.role == "function":
            if last_id is None:
                raise bad_request(f"messages[{i}] (role function) answers no earlier function_call",
                                  param=f"messages[{i}].role")
            m = m.model_copy(update={"role": "tool", "tool_call_id": last_id})
        out.append(m)
    return out


def function_call(calls: list[dict]) -> dict:
    """The answer's one call in the deprecated shape."""
    return {"name": calls[0]["name"], "arguments": calls[0]["arguments"]}


def function_call_delta(event) -> dict:
    if event.name is not None:
        return {"name": event.name, "arguments": event.arguments}
    return {"arguments": event.arguments}
