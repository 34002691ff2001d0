"""LLM: the offline Python API (`from ember import LLM, SamplingParams`)."""

from __future__ import annotations

from typing import Iterable, Iterator

from ember.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.outputs import CompletionOutput, Logprob, RequestMetricsOut, RequestOutput
from ember.loader.chat_template import encode_chat
from ember.request import Request
from ember.sampling_params import SamplingParams


class LLM:
    """`LLM(model=None, **config)`: every EngineConfig field can be passed by name."""

    def __init__(self, model: str | None = None, progress: bool = False, loaded=None, **config):
        self.config = EngineConfig.from_kwargs(model=model, **config)
        self.engine = LLMEngine(self.config, progress=progress, loaded=loaded)
        self.config = self.engine.config  # `auto` options resolved
        self.tokenizer = self.engine.tokenizer

    # --- offline batch ------------------------------------------------------------------------
    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False, priority: int | list[int] = 0) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order. A prompt is a string, {"prompt_token_ids": [...]},
        or {"documents": [...], "prompt": str} to reuse the documents' KV wherever they stand.
        `priority` (one for all, or one per prompt): lower runs sooner under the `priority` policy."""
        single = isinstance(prompts, (str, dict))
        prompts = [prompts] if single else list(prompts)
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params_list)} SamplingParams")
        priorities = priority if isinstance(priority, list) else [priority] * len(prompts)
        if len(priorities) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(priorities)} priorities")
        ids = []
        try:
            for prompt, p, prio in zip(prompts, params_list, priorities):
                ids.append(self.engine.add_request(prompt, p, priority=prio))
            self._run(ids, use_tqdm)
        finally:
            outputs = [self._output(i) for i in ids]
            for i in ids:
                self.engine.release(i)
        return outputs

    def chat(self, messages, params: SamplingParams | None = None, use_tqdm: bool = False,
             add_generation_prompt: bool = True) -> list[RequestOutput]:
        """One conversation (a list of {"role", "content"}) or a list of them."""
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [{"prompt_token_ids": self.encode_chat(c, add_generation_prompt)} for c in convs]
        return self.generate(prompts, params, use_tqdm=use_tqdm)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        return encode_chat(self.tokenizer, messages, add_generation_prompt)

    def warm_chunks(self, documents: list[str]) -> dict:
        """Precompute documents into the chunk cache before queries cite them (LLMEngine.warm_chunks)."""
        return self.engine.warm_chunks(documents)

    def stream(self, prompt, params: SamplingParams | None = None) -> Iterator[str]:
        """Yield text pieces of one prompt's first sequence as they are generated."""
        request_id = self.engine.add_request(prompt, params)
        seq = self.engine.groups[request_id][0]
        try:
            while not seq.is_finished:
                self.engine.step()
                delta = self.engine.text_state(seq).take_delta(seq.is_finished)
                if delta:
                    yield delta
        finally:
            self.engine.release(request_id)

    def _run(self, ids: list[str], use_tqdm: bool) -> None:
        bar = None
        if use_tqdm:
            from tqdm import tqdm
            bar = tqdm(total=len(ids), desc="generating", unit="req")
        pending = set(ids)
        while pending:
            self.engine.step()
            done = {i for i in pending if all(s.is_finished for s in self.engine.groups[i])}
            if bar is not None and done:
                bar.update(len(done))
            pending -= done
        if bar is not None:
            bar.close()

    # --- outputs ------------------------------------------------------------------------------
    def _output(self, request_id: str) -> RequestOutput:
        return build_output(self.engine, self.engine.groups[request_id])


def _logprob_dicts(entries, tokenizer) -> list[dict[int, Logprob]]:
    out = []
    for token, value, rank, top in entries:
        d = {tid: Logprob(lp, r + 1, tokenizer.token_text(tid)) for r, (tid, lp) in enumerate(top)}
        d[token] = Logprob(value, rank, tokenizer.token_text(token))
        out.append(d)
    return out


def build_output(engine: LLMEngine, seqs: list[Request]) -> RequestOutput:
    tok = engine.tokenizer
    first = seqs[0]
    completions = []
    for seq in seqs:
        logprobs = _logprob_dicts(seq.output_logprobs, tok) if seq.params.logprobs is not None else None
        cumulative = sum(e[1] for e in seq.output_logprobs) if seq.output_logprobs else None
        completions.append(CompletionOutput(seq.index, engine.text_state(seq).text, list(seq.output_token_ids),
                                            logprobs, seq.finish_reason, seq.stop_reason, cumulative))
    prompt_logprobs = None
    if first.params.prompt_logprobs is not None:
        entries = [e for e in first.prompt_logprobs if e is not None]
        prompt_logprobs = [None] + _logprob_dicts(entries, tok)
    m = first.metrics
    metrics = RequestMetricsOut(m.arrival_time, m.first_scheduled_time, m.first_token_time, m.last_token_time,
                                max((s.metrics.finished_time or 0) for s in seqs) or None)
    return RequestOutput(first.group_id, first.prompt, list(first.prompt_token_ids), completions,
                         all(s.is_finished for s in seqs), prompt_logprobs, metrics)
