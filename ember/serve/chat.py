"""POST /v1/chat/completions: the model's own chat template, n choices, streamed or not, logprobs."""

from __future__ import annotations

from contextlib import aclosing

from fastapi import Request

from ember.serve import outputs as out
from ember.serve.context import Job, Served, finish_summary, log_state, respond, updates
from ember.serve.errors import OpenAIError
from ember.serve.inputs import chat_prompt, check_chat, resolve_max_tokens, sampling_params
from ember.serve.protocol import ChatCompletionRequest


async def handle_chat(served: Served, body: ChatCompletionRequest, request: Request):
    check_chat(body)
    model = served.model_name(body.model)
    prompt = chat_prompt(body, served.tokenizer)
    requested, param = body.max_tokens, "max_tokens"
    if body.max_completion_tokens is not None:
        requested, param = body.max_completion_tokens, "max_completion_tokens"
    max_tokens = resolve_max_tokens(len(prompt.token_ids), requested, None, served.max_model_len, param)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = sampling_params(body, max_tokens, served.vocab_size, logprobs=logprobs)
    served.admit()
    job = _Chat(served, body, request, model, prompt, params)
    return await respond(request, job, body.stream)


class _Chat(Job):
    id_prefix = "chatcmpl"

    def __init__(self, served: Served, body: ChatCompletionRequest, request: Request, model, prompt, params):
        super().__init__(served, body, request, model)
        self.prompt, self.params = prompt, params
        self.completion_tokens = 0

    def _updates(self):
        return aclosing(updates(self.served, [self.prompt], [self.params], self.request_id, self.body.user,
                                self.body.scheduling_hints()))

    def _usage(self) -> dict:
        return out.usage(len(self.prompt.token_ids), self.completion_tokens)

    def _logprobs(self, entries) -> list | None:
        return out.chat_logprobs(self.served.names, entries) if self.body.logprobs else None

    async def collect(self) -> dict:
        n = self.body.n
        texts, finish, entries = [""] * n, [None] * n, [[] for _ in range(n)]
        async with self._updates() as stream:
            async for _, update in stream:
                for d in update.deltas:
                    texts[d.index] += d.text
                    finish[d.index] = d.finish_reason or finish[d.index]
                    entries[d.index].extend(d.logprobs)
                self.completion_tokens = update.num_output_tokens
        choices = [out.chat_choice(j, texts[j], self._logprobs(entries[j]), finish[j]) for j in range(n)]
        log_state(self.request, self.request_id, len(self.prompt.token_ids), self.completion_tokens,
                  finish_summary(finish))
        return out.chat_body(self.request_id, self.created, self.model, choices, self._usage())

    async def stream(self):
        with_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        finish = {}

        def chunk(choices):
            return out.sse(out.chat_chunk(self.request_id, self.created, self.model, choices, None, with_usage))

        for j in range(self.body.n):
            yield chunk([{"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        try:
            async with self._updates() as stream:
                async for _, update in stream:
                    for d in update.deltas:
                        finish[d.index] = d.finish_reason
                        lp = self._logprobs(d.logprobs)
                        if d.text or d.token_ids:
                            yield chunk([{"index": d.index, "delta": {"content": d.text},
                                          "logprobs": None if lp is None else {"content": lp, "refusal": None},
                                          "finish_reason": None}])
                        if d.finish_reason:
                            yield chunk([{"index": d.index, "delta": {}, "logprobs": None,
                                          "finish_reason": d.finish_reason}])
                    self.completion_tokens = update.num_output_tokens
        except OpenAIError as exc:
            yield out.sse(exc.body())
        if with_usage:
            yield out.sse(out.chat_chunk(self.request_id, self.created, self.model, [], self._usage(), True))
        log_state(self.request, self.request_id, len(self.prompt.token_ids), self.completion_tokens,
                  finish_summary(finish.values()))
        yield out.sse("[DONE]")
