"""Request bodies -> prompt token ids and SamplingParams, with every check that gives a 400.

All validation happens here, on the HTTP side, so a request the engine would refuse never
reaches it: the engine thread only sees work it can run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from ember.loader.chat_template import ChatTemplateError, render_chat_text
from ember.loader.tokenizer import EmberTokenizer
from ember.sampling_params import SamplingParams
from ember.serve.chunks import ChunkMarks, part_text, with_documents
from ember.serve.errors import bad_request
from ember.serve.tools import ToolSetup, render_generic, render_native, tool_setup
from ember.serve.protocol import (UNSUPPORTED_CHAT, UNSUPPORTED_COMPLETION, ChatCompletionRequest,
                                  CompletionRequest)

CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


@dataclass
class Prompt:
    text: str | None  # None when given as token ids
    token_ids: list[int]
    chunk_spans: list[tuple[int, int]] = field(default_factory=list)  # marked chunks (serve/chunks.py)


def check_unsupported(body: BaseModel, table: dict[str, tuple]) -> None:
    for name, allowed in table.items():
        value = getattr(body, name, None)
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise bad_request(f"{name} is not supported by this server", param=name, code="unsupported_parameter")


def completion_prompts(body: CompletionRequest, tokenizer: EmberTokenizer, vocab_size: int) -> list[Prompt]:
    p = body.prompt
    if isinstance(p, str):
        items = [p]
    elif not p:
        raise bad_request("prompt must not be empty", param="prompt")
    elif all(isinstance(x, int) for x in p):
        items = [list(p)]
    else:
        items = list(p)
    prompts = []
    for item in items:
        if isinstance(item, str):
            prompts.append(Prompt(item, tokenizer.encode(item)))
            if body.documents:  # the chunks' text comes first; `text` is what echo gives back
                ids, spans = with_documents(tokenizer, body.documents, prompts[-1].token_ids)
                prompts[-1] = Prompt("".join(body.documents) + item, ids, spans)
        else:
            bad = [t for t in item if not 0 <= t < vocab_size]
            if bad:
                raise bad_request(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab_size})",
                                  param="prompt")
            prompts.append(Prompt(None, *with_documents(tokenizer, body.documents, list(item))))
        if not prompts[-1].token_ids:
            raise bad_request("prompt must not be empty", param="prompt")
    return prompts


def chat_messages(body: ChatCompletionRequest, marks: ChunkMarks | None = None) -> list[dict]:
    if not body.messages:
        raise bad_request("messages must not be empty", param="messages")
    out = []
    for i, m in enumerate(body.messages):
        where = f"messages[{i}]"
        role = CHAT_ROLES.get(m.role)
        if role is None:
            raise bad_request(f"{where}.role {m.role!r} is not one of: system, developer, user, assistant, tool",
                              param=f"{where}.role")
        if m.tool_calls and role != "assistant":
            raise bad_request(f"{where}.tool_calls is only allowed on assistant messages", param=f"{where}.tool_calls")
        message = {"role": role}
        if m.tool_calls:
            message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            message["content"] = None if m.content is None else _content_text(m.content, where, marks)
        else:
            message["content"] = _content_text(m.content, where, marks)
        if role == "tool":
            if m.tool_call_id is None:
                raise bad_request(f"{where}.tool_call_id is required on tool messages", param=f"{where}.tool_call_id")
            message["tool_call_id"] = m.tool_call_id
        if m.name is not None and role in ("tool", "user"):
            message["name"] = m.name
        out.append(message)
    return out


def _content_text(content, where: str, marks: ChunkMarks | None = None) -> str:
    if content is None:
        raise bad_request(f"{where}.content must not be empty", param=f"{where}.content")
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise bad_request(f"{where}.content[{j}] of type {part.type!r} is not supported (text only)",
                              param=f"{where}.content", code="unsupported_parameter")
        texts.append(part_text(part, f"{where}.content[{j}]", marks))
    return "\n".join(texts)


def chat_prompt(body: ChatCompletionRequest, tokenizer: EmberTokenizer, setup: ToolSetup | None = None) -> Prompt:
    """The conversation through the model's template; tools and tool turns as serve/tools.py says."""
    setup = setup or tool_setup(body, tokenizer.chat_template)
    marks = ChunkMarks()
    messages = chat_messages(body, marks)
    if not tokenizer.chat_template:
        raise bad_request("this model has no chat template; use /v1/completions", param="messages")
    try:
        if setup.native:
            text = render_chat_text(tokenizer, render_native(messages), body.add_generation_prompt,
                                    tools=setup.tools if setup.active else None)
        else:
            text = render_chat_text(tokenizer, render_generic(messages, setup), body.add_generation_prompt)
        return Prompt(None, *marks.encode(tokenizer, text))
    except ChatTemplateError as exc:
        raise bad_request(str(exc), param="messages")


def resolve_max_tokens(num_prompt: int, requested: int | None, default: int | None, max_model_len: int,
                       param: str = "max_tokens") -> int:
    """The output budget; a prompt or an explicit request beyond the context is a 400."""
    if num_prompt >= max_model_len:
        raise bad_request(f"the prompt is {num_prompt} tokens; this model's context is {max_model_len} tokens "
                          "(prompt + output)", param="messages" if param != "max_tokens" else "prompt",
                          code="context_length_exceeded")
    room = max_model_len - num_prompt
    if requested is None:
        return room if default is None else min(default, room)
    if num_prompt + requested > max_model_len:
        raise bad_request(f"this model's context is {max_model_len} tokens, but {num_prompt + requested} were "
                          f"requested ({num_prompt} in the prompt, {requested} in the completion)",
                          param=param, code="context_length_exceeded")
    return requested


def sampling_params(body, max_tokens: int, vocab_size: int, logprobs: int | None = None,
                    prompt_logprobs: int | None = None, structured_outputs=None) -> SamplingParams:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    for t in body.stop_token_ids or []:
        if not 0 <= t < vocab_size:
            raise bad_request(f"stop_token_ids: {t} is outside the vocabulary [0, {vocab_size})",
                              param="stop_token_ids")
    try:
        return SamplingParams(
            n=body.n, max_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k, min_p=body.min_p,
            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
            repetition_penalty=body.repetition_penalty, seed=body.seed, stop=stop,
            stop_token_ids=list(body.stop_token_ids or []), ignore_eos=body.ignore_eos, min_tokens=body.min_tokens,
            logprobs=logprobs, prompt_logprobs=prompt_logprobs, skip_special_tokens=body.skip_special_tokens,
            structured_outputs=structured_outputs)
    except ValueError as exc:  # SamplingParams names the field first
        raise bad_request(str(exc), param=str(exc).split(" ", 1)[0])


def _check_stream_options(body) -> None:
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed with stream: true", param="stream_options")


def check_completion(body: CompletionRequest) -> None:
    check_unsupported(body, UNSUPPORTED_COMPLETION)
    _check_stream_options(body)
    if body.stream and body.echo and body.logprobs is not None:
        raise bad_request("echo with logprobs is supported without streaming only", param="echo",
                          code="unsupported_parameter")


def check_chat(body: ChatCompletionRequest) -> None:
    check_unsupported(body, UNSUPPORTED_CHAT)
    _check_stream_options(body)
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
