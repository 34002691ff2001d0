"""Engine updates -> OpenAI response bodies and stream chunks (completions and chat)."""

from __future__ import annotations

import json

from ember.loader.tokenizer import EmberTokenizer, byte_alphabet

_UNBYTE = {ch: b for b, ch in byte_alphabet().items()}


class TokenText:
    """A token's text and raw bytes as logprobs report them (cached: the same ids recur)."""

    def __init__(self, tokenizer: EmberTokenizer):
        self.tokenizer = tokenizer
        self._text: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        if token_id not in self._text:
            self._text[token_id] = self.tokenizer.token_text(token_id)
        return self._text[token_id]

    def bytes(self, token_id: int) -> list[int]:
        piece = self.tokenizer.token_str(token_id) or ""
        if piece and all(ch in _UNBYTE for ch in piece):  # byte-level BPE: one symbol per byte
            return [_UNBYTE[ch] for ch in piece]
        return list(self.text(token_id).encode("utf-8"))


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


# --- completions ----------------------------------------------------------------------------------
class CompletionLogprobs:
    """The legacy completions logprobs object, built up token by token."""

    def __init__(self, names: TokenText, offset: int = 0):
        self.names, self.offset = names, offset
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []

    def add_prompt(self, prompt_ids: list[int], entries: list) -> None:
        for token_id, entry in zip(prompt_ids, entries):
            if entry is None:  # the first prompt token has no prediction
                self._append(self.names.text(token_id), None, None)
            else:
                self.add([entry])

    def add(self, entries) -> None:
        for token, logprob, _rank, top in entries:
            alts = {self.names.text(t): lp for t, lp in top}
            alts.setdefault(self.names.text(token), logprob)
            self._append(self.names.text(token), logprob, alts)

    def _append(self, token: str, logprob, top) -> None:
        self.tokens.append(token)
        self.token_logprobs.append(logprob)
        self.top_logprobs.append(top)
        self.text_offset.append(self.offset)
        self.offset += len(token)

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs,
                "text_offset": self.text_offset}


def completion_body(request_id: str, created: int, model: str, choices: list[dict], usage_: dict) -> dict:
    return {"id": request_id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage_}


def completion_choice(index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


# --- chat -----------------------------------------------------------------------------------------
def chat_logprobs(names: TokenText, entries) -> list[dict]:
    out = []
    for token, logprob, _rank, top in entries:
        out.append({"token": names.text(token), "logprob": logprob, "bytes": names.bytes(token),
                    "top_logprobs": [{"token": names.text(t), "logprob": lp, "bytes": names.bytes(t)}
                                     for t, lp in top]})
    return out


def chat_body(request_id: str, created: int, model: str, choices: list[dict], usage_: dict) -> dict:
    return {"id": request_id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": usage_}


def chat_choice(index: int, text: str | None, logprobs: list | None, finish_reason: str | None,
                tool_calls: list[dict] | None = None) -> dict:
    message = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message,
            "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
            "finish_reason": finish_reason}


def chat_chunk(request_id: str, created: int, model: str, choices: list[dict], usage_: dict | None = None,
               with_usage: bool = False) -> dict:
    body = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices}
    if with_usage:
        body["usage"] = usage_
    return body


def completion_chunk(request_id: str, created: int, model: str, choices: list[dict], usage_: dict | None = None,
                     with_usage: bool = False) -> dict:
    body = completion_body(request_id, created, model, choices, usage_)
    if not with_usage:
        body.pop("usage")
    return body
