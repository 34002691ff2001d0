"""POST /v1/completions: one or many prompts, n sequences each, streamed or not, echo and logprobs."""

from __future__ import annotations

from contextlib import aclosing

from fastapi import Request

from ember.serve import outputs as out
from ember.serve.context import Job, Served, finish_summary, log_state, respond, updates
from ember.serve.errors import OpenAIError
from ember.serve.inputs import check_completion, completion_prompts, resolve_max_tokens, sampling_params
from ember.serve.protocol import CompletionRequest
from ember.serve.structured import compile_grammar, structured_outputs

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


async def handle_completions(served: Served, body: CompletionRequest, request: Request):
    check_completion(body)
    model = served.model_name(body.model)
    prompts = completion_prompts(body, served.tokenizer, served.vocab_size)
    echo_logprobs = body.logprobs if body.echo and body.logprobs is not None else None
    so, so_param = structured_outputs(body)
    params = [sampling_params(body, resolve_max_tokens(len(p.token_ids), body.max_tokens, DEFAULT_MAX_TOKENS,
                                                       served.max_model_len),
                              served.vocab_size, logprobs=body.logprobs, prompt_logprobs=echo_logprobs,
                              structured_outputs=so)
              for p in prompts]
    served.admit(len(prompts))
    if so is not None:
        await compile_grammar(served, so, so_param)  # off the event loop and the engine thread
    job = _Completion(served, body, request, model, prompts, params)
    return await respond(request, job, body.stream)


class _Completion(Job):
    id_prefix = "cmpl"

    def __init__(self, served: Served, body: CompletionRequest, request: Request, model, prompts, params):
        super().__init__(served, body, request, model)
        self.prompts, self.params = prompts, params
        self.n = body.n
        self.prompt_tokens = sum(len(p.token_ids) for p in prompts)
        self.completion_tokens = [0] * len(prompts)

    def prompt_text(self, i: int) -> str:
        p = self.prompts[i]
        return p.text if p.text is not None else self.served.tokenizer.decode(p.token_ids, skip_special_tokens=False)

    def _updates(self):
        return aclosing(updates(self.served, self.prompts, self.params, self.request_id, self.body.user,
                                self.body.scheduling_hints()))

    def _usage(self) -> dict:
        return out.usage(self.prompt_tokens, sum(self.completion_tokens))

    async def collect(self) -> dict:
        count = len(self.prompts) * self.n
        texts, finish = [""] * count, [None] * count
        entries = [[] for _ in range(count)]  # raw logprob entries per choice
        prompt_entries = {}
        async with self._updates() as stream:
            async for i, update in stream:
                for d in update.deltas:
                    c = i * self.n + d.index
                    texts[c] += d.text
                    finish[c] = d.finish_reason or finish[c]
                    entries[c].extend(d.logprobs)
                if update.finished:
                    self.completion_tokens[i] = update.num_output_tokens
                    prompt_entries[i] = update.prompt_logprobs
        choices = []
        for c in range(count):
            i, logprobs = c // self.n, None
            if self.body.logprobs is not None:
                builder = out.CompletionLogprobs(self.served.names)
                if self.body.echo and prompt_entries.get(i) is not None:
                    builder.add_prompt(self.prompts[i].token_ids, prompt_entries[i])
                builder.add(entries[c])
                logprobs = builder.to_dict()
            text = self.prompt_text(i) + texts[c] if self.body.echo else texts[c]
            choices.append(out.completion_choice(c, text, logprobs, finish[c]))
        log_state(self.request, self.request_id, self.prompt_tokens, sum(self.completion_tokens),
                  finish_summary(finish))
        return out.completion_body(self.request_id, self.created, self.model, choices, self._usage())

    async def stream(self):
        with_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        finish = {}

        def chunk(c: int, text: str, logprobs, reason):
            choice = out.completion_choice(c, text, logprobs, reason)
            return out.sse(out.completion_chunk(self.request_id, self.created, self.model, [choice], None, with_usage))

        offsets = {}
        if self.body.echo:
            for c in range(len(self.prompts) * self.n):
                offsets[c] = len(self.prompt_text(c // self.n))
                yield chunk(c, self.prompt_text(c // self.n), None, None)
        try:
            async with self._updates() as stream:
                async for i, update in stream:
                    for d in update.deltas:
                        c = i * self.n + d.index
                        lp = None
                        if self.body.logprobs is not None:
                            builder = out.CompletionLogprobs(self.served.names, offsets.get(c, 0))
                            builder.add(d.logprobs)
                            offsets[c] = builder.offset
                            lp = builder.to_dict()
                        finish[c] = d.finish_reason
                        if d.text or d.finish_reason or d.token_ids:
                            yield chunk(c, d.text, lp, d.finish_reason)
                    if update.finished:
                        self.completion_tokens[i] = update.num_output_tokens
        except OpenAIError as exc:
            yield out.sse(exc.body())
        if with_usage:
            yield out.sse(out.completion_chunk(self.request_id, self.created, self.model, [], self._usage(), True))
        log_state(self.request, self.request_id, self.prompt_tokens, sum(self.completion_tokens),
                  finish_summary(finish.values()))
        yield out.sse("[DONE]")
