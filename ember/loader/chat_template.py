"""Render a model's own Jinja chat template, sandboxed, the way transformers does."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    pass


def _raise(message: str):
    raise ChatTemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' tojson keeps non-ASCII text as is (jinja's default would escape it)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=8)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat(
    template: str,
    messages: list[dict],
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra,
) -> str:
    """The prompt text for `messages` (a list of {"role", "content"} dicts)."""
    if not messages:
        raise ChatTemplateError("messages must not be empty")
    try:
        return _compile(template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except ChatTemplateError:
        raise
    except TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                tools: list[dict] | None = None) -> list[int]:
    """Token ids of a conversation rendered with the tokenizer's own chat template (`tools`: the
    OpenAI tool objects, for a template that renders them itself)."""
    return tokenizer.encode(render_chat_text(tokenizer, messages, add_generation_prompt, tools), add_bos=False)


def render_chat_text(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                     tools: list[dict] | None = None) -> str:
    """The conversation as the tokenizer's own chat template renders it (before tokenizing)."""
    if not tokenizer.chat_template:
        raise ChatTemplateError("this model has no chat template; use a raw prompt")
    tok = tokenizer
    return render_chat(tok.chat_template, messages, add_generation_prompt,
                       bos_token=tok.token_text(tok.bos_token_id) if tok.bos_token_id is not None else "",
                       eos_token=tok.token_text(tok.eos_token_id) if tok.eos_token_id is not None else "",
                       **({"tools": tools} if tools else {}))
