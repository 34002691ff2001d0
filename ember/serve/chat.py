"""POST /v1/chat/completions: the model's own chat template, n choices, streamed or not, logprobs."""

from __future__ import annotations

from contextlib import aclosing

from fastapi import Request

from ember.serve import outputs as out
from ember.serve.context import Job, Served, finish_summary, log_state, respond, updates
from ember.serve.errors import OpenAIError, bad_request
from ember.serve.inputs import chat_prompt, check_chat, resolve_max_tokens, sampling_params
from ember.serve.protocol import ChatCompletionRequest
from ember.serve.structured import compile_grammar, structured_outputs
from ember.serve import legacy_functions as legacy
from ember.serve.tools import ToolSetup, openai_tool_calls, parse_tool_calls, tool_grammar, tool_setup


async def handle_chat(served: Served, body: ChatCompletionRequest, request: Request):
    check_chat(body)
    model = served.model_name(body.model)
    functions = legacy.uses_functions(body)
    body = legacy.as_tools(body)
    setup = tool_setup(body, served.tokenizer.chat_template, served.options.tool_syntax)
    so, so_param = structured_outputs(body)
    if setup.active:
        if so is not None:
            raise bad_request(f'{so_param} cannot be combined with tools unless tool_choice is "none"', param=so_param)
        so, so_param = tool_grammar(setup), "tools"
    prompt = chat_prompt(body, served.tokenizer, setup)
    requested, param = body.max_tokens, "max_tokens"
    if body.max_completion_tokens is not None:
        requested, param = body.max_completion_tokens, "max_completion_tokens"
    max_tokens = resolve_max_tokens(len(prompt.token_ids), requested, None, served.max_model_len, param)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = sampling_params(body, max_tokens, served.vocab_size, logprobs=logprobs, structured_outputs=so)
    served.admit()
    if so is not None:
        await compile_grammar(served, so, so_param)  # off the event loop and the engine thread
    job = _Chat(served, body, request, model, prompt, params, setup, functions)
    return await respond(request, job, body.stream)


class _Chat(Job):
    id_prefix = "chatcmpl"

    def __init__(self, served: Served, body: ChatCompletionRequest, request: Request, model, prompt, params,
                 setup: ToolSetup, functions: bool = False):
        super().__init__(served, body, request, model)
        self.prompt, self.params, self.setup = prompt, params, setup
        self.functions = functions  # answer in the deprecated function_call shape
        self.calls_finish = "function_call" if functions else "tool_calls"
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
        choices = []
        for j in range(n):
            content, calls = texts[j], []
            if self.setup.active:
                content, calls = parse_tool_calls(texts[j], self.setup, finish[j])
                if calls and finish[j] == "stop":
                    finish[j] = self.calls_finish
            choice = out.chat_choice(j, content, self._logprobs(entries[j]), finish[j],
                                     openai_tool_calls(calls) if calls and not self.functions else None)
            if calls and self.functions:
                choice["message"]["function_call"] = legacy.function_call(calls)
            choices.append(choice)
        log_state(self.request, self.request_id, len(self.prompt.token_ids), self.completion_tokens,
                  finish_summary(finish))
        return out.chat_body(self.request_id, self.created, self.model, choices, self._usage())

    async def stream(self):
        with_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        finish = {}

        def chunk(choices):
            return out.sse(out.chat_chunk(self.request_id, self.created, self.model, choices, None, with_usage))

        parsers = [self.setup.parser() if self.setup.active else None for _ in range(self.body.n)]

        def delta_chunk(index, delta, lp):
            return chunk([{"index": index, "delta": delta,
                           "logprobs": None if lp is None else {"content": lp, "refusal": None},
                           "finish_reason": None}])

        for j in range(self.body.n):
            yield chunk([{"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        try:
            async with self._updates() as stream:
                async for _, update in stream:
                    for d in update.deltas:
                        finish[d.index] = d.finish_reason
                        lp = self._logprobs(d.logprobs)
                        parser = parsers[d.index]
                        if parser is None:
                            if d.text or d.token_ids:
                                yield delta_chunk(d.index, {"content": d.text}, lp)
                        else:
                            content, events = parser.feed(d.text)
                            if d.finish_reason:
                                content += parser.finish()
                            if content or (lp and not events):
                                yield delta_chunk(d.index, {"content": content}, lp)
                                lp = None
                            for e in events:
                                delta = {"function_call": legacy.function_call_delta(e)} if self.functions \
                                    else {"tool_calls": [_call_delta(e)]}
                                yield delta_chunk(d.index, delta, lp)
                                lp = None
                            if parser.calls and d.finish_reason == "stop":
                                finish[d.index] = self.calls_finish
                        if d.finish_reason:
                            yield chunk([{"index": d.index, "delta": {}, "logprobs": None,
                                          "finish_reason": finish[d.index]}])
                    self.completion_tokens = update.num_output_tokens
        except OpenAIError as exc:
            yield out.sse(exc.body())
        if with_usage:
            yield out.sse(out.chat_chunk(self.request_id, self.created, self.model, [], self._usage(), True))
        log_state(self.request, self.request_id, len(self.prompt.token_ids), self.completion_tokens,
                  finish_summary(finish.values()))
        yield out.sse("[DONE]")


def _call_delta(event) -> dict:
    """OpenAI's streamed tool call: id, type and name first (arguments ""), then argument text."""
    if event.name is not None:
        return {"index": event.index, "id": event.id, "type": "function",
                "function": {"name": event.name, "arguments": event.arguments}}
    return {"index": event.index, "function": {"arguments": event.arguments}}
