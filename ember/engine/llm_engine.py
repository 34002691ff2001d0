"""LLMEngine: the synchronous step loop that ties scheduler, KV cache, model runner and sampler.

`add_request` queues work; each `step` schedules one batch, runs the model once on it,
samples one token per sequence that needs one, and reports what changed.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from ember.config import EngineConfig
from ember.engine.detokenize import TextState
from ember.engine.model_runner import ModelRunner
from ember.engine.policies import POLICIES
from ember.engine.sampling import Sampler
from ember.engine.scheduler import Scheduler
from ember.kernels.attention import get_attention_backend
from ember.kernels.native import NativeUnavailable
from ember.kv.cache import PagedKVCache
from ember.kv.manager import KVCacheManager
from ember.kv.spec import kv_cache_spec
from ember.loader import LoadedModel, load_model
from ember.request import Request, RequestStatus
from ember.sampling_params import SamplingParams


@dataclass
class StepStats:
    num_scheduled_tokens: int = 0
    num_seqs: int = 0
    num_preempted: int = 0
    seconds: float = 0.0


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None, progress: bool = False, loaded: LoadedModel | None = None):
        """`loaded` reuses a model already in memory (tests, benchmarks); it must match the config."""
        self.config = config = config or EngineConfig()
        config.apply_threads()
        if loaded is None:
            loaded = load_model(config.model, config.torch_dtype, config.linear, config.attention, progress=progress)
        elif loaded.model.dtype != config.torch_dtype:
            raise ValueError(f"the loaded model is {loaded.model.dtype}, the config asks for {config.dtype}")
        self.loaded = loaded
        self.model, self.tokenizer, self.model_config = self.loaded.model, self.loaded.tokenizer, self.loaded.config
        spec = kv_cache_spec(config, self.model_config)
        self.kv_spec, self.num_blocks, bs = spec, spec.num_blocks, spec.block_size
        self.kv_cache_bytes, self.max_model_len = spec.total_bytes, spec.max_model_len
        self.kv_cache = PagedKVCache(spec.codec, spec.num_layers, spec.num_blocks)
        self.kv = KVCacheManager(spec.num_blocks, bs, enable_prefix_caching=config.enable_prefix_caching)
        self.scheduler = Scheduler(self.kv, POLICIES.create(config.policy), config.max_num_seqs,
                                   config.max_num_batched_tokens, preemptor=self._make_preemptor())
        attention = get_attention_backend(config.attention)
        self.runner = ModelRunner(self.model, self.kv_cache, bs, attention, self._make_decoder(attention))
        self.sampler = Sampler(config.seed)
        self.requests: dict[str, Request] = {}  # every unfinished sequence, by its own id
        self.groups: dict[str, list[Request]] = {}  # user-facing request id -> its n sequences
        self._pending_forks: dict[str, list[Request]] = {}  # parent id -> children waiting for its prefill
        self._text: dict[str, TextState] = {}
        self._ids = itertools.count()
        self._order = itertools.count()
        self.stop_token_ids = set(self.tokenizer.stop_token_ids)
        self.last_step = StepStats()
        self.total_generated_tokens = 0
        self.total_prompt_tokens = 0

    def _make_decoder(self, attention):
        """The model's fused decode step, as config.fused_decode asks; None: the PyTorch path.
        Why it is off, when it is, stays in `fused_decode_off_reason`."""
        self.fused_decode_off_reason = "fused_decode=off"
        if self.config.fused_decode == "off":
            return None
        make = getattr(self.model, "native_decoder", None)
        try:
            if make is None:
                raise NativeUnavailable(f"{type(self.model).__name__} has no fused decode step")
            decoder = make(self.kv_cache, attention)
            self.fused_decode_off_reason = None
            return decoder
        except NativeUnavailable as e:
            if self.config.fused_decode == "on":
                raise ValueError(f"fused_decode=on, but the fused decode step can't run: {e}") from None
            self.fused_decode_off_reason = str(e)
            return None

    def _make_preemptor(self):
        if self.config.preemption == "swap":
            from ember.kv.swap import SwapPreemptor
            return SwapPreemptor(self)
        return None

    # --- requests -----------------------------------------------------------------------------
    def encode_prompt(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            ids = list(prompt["prompt_token_ids"])
            vocab = self.model_config.vocab_size
            bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab]
            if bad:
                raise ValueError(f"prompt token id {bad[0]!r} is outside the vocabulary [0, {vocab})")
            return prompt.get("prompt"), ids
        if isinstance(prompt, dict) and "prompt" in prompt:
            return prompt["prompt"], self.tokenizer.encode(prompt["prompt"])
        raise ValueError(f"a prompt is a string or {{'prompt_token_ids': [...]}}, got {type(prompt).__name__}")

    def add_request(self, prompt, params: SamplingParams | None = None, request_id: str | None = None,
                    user: str | None = None) -> str:
        params = params or SamplingParams()
        text, ids = self.encode_prompt(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens; this engine holds at most "
                             f"{self.max_model_len} tokens per sequence (prompt + output)")
        room = self.max_model_len - len(ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        request_id = request_id if request_id is not None else str(next(self._ids))
        if request_id in self.groups:
            raise ValueError(f"request id {request_id!r} is already in use")
        seqs = []
        for index in range(params.n):
            seq = Request(f"{request_id}#{index}" if params.n > 1 else request_id, ids, params, max_tokens,
                          eos_token_id=self.tokenizer.eos_token_id, prompt=text, index=index, user=user,
                          group_id=request_id, arrival_order=next(self._order))
            self._text[seq.request_id] = TextState(self.tokenizer, params.stop, params.skip_special_tokens)
            self.requests[seq.request_id] = seq
            seqs.append(seq)
        self.groups[request_id] = seqs
        self.total_prompt_tokens += len(ids)
        self.scheduler.add(seqs[0])
        if len(seqs) > 1:  # the others fork from the first once its prompt is in the cache
            self._pending_forks[seqs[0].request_id] = seqs[1:]
        return request_id

    def abort_request(self, request_id: str) -> None:
        for seq in self.groups.get(request_id, []):
            self._finish(seq, RequestStatus.FINISHED_ABORTED)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # --- the step -----------------------------------------------------------------------------
    def step(self) -> list[Request]:
        """Run one batch; return the sequences that produced a token or finished."""
        t0 = time.perf_counter()
        batch = self.scheduler.schedule()
        if batch.empty:
            if self.scheduler.waiting and not self.scheduler.running:
                # Nothing can run and nothing will free memory: fail loudly rather than spin.
                for seq in list(self.scheduler.waiting):
                    self._finish(seq, RequestStatus.FINISHED_ABORTED)
                raise RuntimeError("the KV cache cannot hold a waiting request even when empty")
            return []
        result = self.runner.execute(batch, self.kv.take_pending_copies())
        for request, n in batch.scheduled:
            request.num_computed_tokens += n
            self.kv.cache_full_blocks(request)
        for rid, (logits, first) in result.prompt_logits.items():
            self._record_prompt_logprobs(self.requests[rid], logits, first)
        changed = []
        if result.sample_requests:
            sample_requests, logits = self._expand_forks(result.sample_requests, result.logits)
            sampled = self.sampler(logits, sample_requests)
            for i, request in enumerate(sample_requests):
                self._append_token(request, sampled.token_ids[i], sampled.logprobs[i])
                changed.append(request)
        self.last_step = StepStats(batch.num_tokens, len(batch.scheduled), len(batch.preempted), time.perf_counter() - t0)
        return changed

    def _expand_forks(self, requests: list[Request], logits):
        """A parent whose prompt just finished brings its waiting siblings in, sharing its blocks."""
        extra_rows, extra = [], []
        for row, parent in enumerate(requests):
            for child in self._pending_forks.pop(parent.request_id, []):
                if child.is_finished:
                    continue
                self.kv.fork(parent, child)
                child.status = RequestStatus.RUNNING
                child.metrics.first_scheduled_time = parent.metrics.first_scheduled_time
                self.scheduler.running.append(child)
                extra_rows.append(row)
                extra.append(child)
        if extra:
            import torch
            logits = torch.cat([logits, logits[torch.tensor(extra_rows)]])
        return requests + extra, logits

    def _append_token(self, request: Request, token: int, logprob) -> None:
        now = time.monotonic()
        request.output_token_ids.append(token)
        self.total_generated_tokens += 1
        if logprob is not None:
            request.output_logprobs.append((token,) + tuple(logprob))
        if request.metrics.first_token_time is None:
            request.metrics.first_token_time = now
        request.metrics.last_token_time = now
        text = self._text[request.request_id]
        p = request.params
        if not p.ignore_eos and (token in self.stop_token_ids):
            return self._finish(request, RequestStatus.FINISHED_STOPPED)
        if token in p.stop_token_ids:
            request.stop_reason = token
            return self._finish(request, RequestStatus.FINISHED_STOPPED)
        stop = text.add(token)
        if stop is not None:
            request.stop_reason = stop
            return self._finish(request, RequestStatus.FINISHED_STOPPED)
        if len(request.output_token_ids) >= request.max_tokens:
            return self._finish(request, RequestStatus.FINISHED_LENGTH)

    def _record_prompt_logprobs(self, request: Request, logits, first: int) -> None:
        """Logprob of each prompt token given the ones before it, with top-N alternatives."""
        logprobs = logits.log_softmax(dim=-1)
        prompt = request.prompt_token_ids
        if first == 0:
            request.prompt_logprobs.append(None)  # the first token has no prediction
        top_n = request.params.prompt_logprobs
        for row in range(logprobs.shape[0]):
            target_pos = first + row + 1
            if target_pos >= len(prompt):
                break
            token = prompt[target_pos]
            lp = logprobs[row]
            value = float(lp[token])
            rank = int((lp > lp[token]).sum()) + 1
            top = []
            if top_n:
                v, i = lp.topk(top_n)
                top = list(zip(i.tolist(), v.tolist()))
            request.prompt_logprobs.append((token, value, rank, top))

    def _finish(self, request: Request, status: RequestStatus) -> None:
        if request.is_finished:
            return
        self._pending_forks.pop(request.request_id, None)
        self.scheduler.finish(request, status)
        self._text[request.request_id].finish()
        request.metrics.finished_time = time.monotonic()
        self.requests.pop(request.request_id, None)

    def text_state(self, request: Request) -> TextState:
        return self._text[request.request_id]

    def release(self, request_id: str) -> None:
        """Forget a finished request group once its output has been read."""
        for seq in self.groups.pop(request_id, []):
            self._text.pop(seq.request_id, None)
            if not seq.is_finished:
                self._finish(seq, RequestStatus.FINISHED_ABORTED)
