"""LLMEngine: the synchronous step loop that ties scheduler, KV cache, model runner and sampler.

`add_request` queues work; each `step` schedules one batch, runs the model once on it,
samples one token per sequence that needs one, hands the tokens to the scheduler's `update`
(which does the bookkeeping and the stop checks) and reports what changed. Tokenizing,
detokenizing, sampling and logprobs stay here: the scheduler runs without a model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
import time
import warnings
from dataclasses import dataclass

import torch

from ember.config import EngineConfig, parse_bytes
from ember.engine.detokenize import TextState
from ember.engine.model_runner import ModelRunner
from ember.engine.policies import POLICIES
from ember.engine.blend import Blender
from ember.engine.profile import NO_CLOCK, StepProfiler
from ember.engine.prompts import EncodedPrompt, encode_prompt
from ember.engine.sampling import Sampler
from ember.engine.scheduling_setup import build_scheduler
from ember.kernels.attention import get_attention_backend
from ember.kernels.native import NativeUnavailable
from ember.kv.cache import PagedKVCache
from ember.kv.press import KV_PRESSES, parse_press
from ember.kv.preemption import make_preemptor
from ember.kv.press.compact import compact
from ember.kv.spec import kv_cache_spec
from ember.loader import LoadedModel, dtype_name, load_model
from ember.request import Request, RequestStatus
from ember.sampling_params import SamplingParams
from ember.structured.backend import GrammarBackend


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
        self._thread = threading.get_ident()  # the thread that loads; see _stepped_elsewhere
        self._warned_thread = False
        policy = POLICIES.create(config.policy, config)  # a bad name fails before seconds of loading
        self.startup_s: dict[str, float] = {}  # where start-up went, by part (`ember serve` says)
        if loaded is None:
            with self._timed("model"):
                loaded = load_model(config.model, config.dtype, config.linear, config.attention, progress=progress,
                                    quantizer=config.quantizer, calibration_tokens=config.calibration_tokens)
        elif config.dtype != "auto" and loaded.model.dtype != config.torch_dtype:
            raise ValueError(f"the loaded model is {loaded.model.dtype}, the config asks for {config.dtype}")
        # `auto` options become what the loader chose; the notes say why (`ember serve` prints them)
        self.config = config = dataclasses.replace(
            config, dtype=dtype_name(loaded.model.dtype),
            linear=loaded.linear if config.linear == "auto" else config.linear)
        self.auto_notes = loaded.auto_notes
        self.loaded = loaded
        self.model, self.tokenizer, self.model_config = self.loaded.model, self.loaded.tokenizer, self.loaded.config
        spec = kv_cache_spec(config, self.model_config)
        if spec.seqs_note(config):  # the scratch pool caps the sequences a step holds
            self.auto_notes = (*self.auto_notes, spec.seqs_note(config))
            self.config = config = dataclasses.replace(config, max_num_seqs=spec.max_num_seqs)
        self.kv_spec, self.num_blocks, bs = spec, spec.num_blocks, spec.block_size
        self.kv_cache_bytes, self.max_model_len = spec.total_bytes, spec.max_model_len
        if spec.codec.needs_positions and config.kv_press:
            raise ValueError(f"kv_press can't run with kv_cache_dtype {config.kv_cache_dtype!r}: compacted entries "
                             "are written without their positions, which this codec stores them by")
        with self._timed("KV cache"):
            self.kv_cache = PagedKVCache(spec.codec, spec.num_layers, spec.num_blocks, spec.num_scratch, spec.num_pass)
            self.kv_cache.bind_model(self.model)  # a codec that stores K/V through the model's weights
        self.scheduler = build_scheduler(config, spec.num_blocks, bs, self.tokenizer.stop_token_ids, policy,
                                         preemptor=self._make_preemptor())
        self.kv = self.scheduler.kv
        self.kv.pool.on_release = self.kv_cache.release  # a freed block's scratch slot goes back
        attention = get_attention_backend(config.attention)
        with self._timed("C kernels"):
            decoder = self._make_decoder(attention)
        self.runner = ModelRunner(self.model, self.kv_cache, bs, attention, decoder)
        self.runner.blender = self._make_blender(self.runner)
        self.sampler = Sampler(config.seed)
        self.structured = GrammarBackend(self.tokenizer, self.model_config.vocab_size)  # compiles on first use
        self.press = KV_PRESSES.create(*parse_press(config.kv_press), config) if config.kv_press else None
        self._press_budget: dict[str, int] = {}  # request id -> entries its first press kept (--kv-press-interval)
        self.profiler = StepProfiler(self.runner.decoder)  # off until profiler.enable(path)
        self.requests: dict[str, Request] = {}  # every unfinished sequence, by its own id
        self.groups: dict[str, list[Request]] = {}  # user-facing request id -> its n sequences
        self._text: dict[str, TextState] = {}
        self._ids = itertools.count()
        self._order = itertools.count()
        self.last_step = StepStats()
        self.total_generated_tokens = 0
        self.total_prompt_tokens = 0

    @contextlib.contextmanager
    def _timed(self, part: str):
        start = time.perf_counter()
        yield
        self.startup_s[part] = time.perf_counter() - start

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

    def _make_blender(self, runner: ModelRunner) -> Blender | None:
        """What fills and blends chunk-cache entries; None (and chunk marks ignored) when the
        cache is off or the model has no blend prefill."""
        if not self.config.enable_chunk_cache or getattr(self.model, "blend_prefill", None) is None:
            self.kv.enable_chunk_cache = False
            return None
        return Blender(self.model, self.kv_cache, runner.forward, self.config.blend_recompute_ratio,
                       self.config.blend_check_layer)

    def _make_preemptor(self):
        return make_preemptor(self.config.preemption, self.kv_cache,
                              self.kv_spec.blocks_in(parse_bytes(self.config.swap_space)))

    # --- requests -----------------------------------------------------------------------------
    def encode_prompt(self, prompt) -> EncodedPrompt:
        return encode_prompt(self.tokenizer, self.model_config.vocab_size, prompt)

    def add_request(self, prompt, params: SamplingParams | None = None, request_id: str | None = None,
                    user: str | None = None, priority: int = 0, slo_ttft_ms: float = 0.0,
                    slo_tpot_ms: float = 0.0, program_id: str | None = None, tool_call: str | None = None) -> str:
        """Queue a prompt's n sequences; `priority`: lower runs sooner under the `priority` policy;
        `slo_ttft_ms`, `slo_tpot_ms`: latency targets for the `slo` policy (0: the engine's default);
        `program_id`, `tool_call`: the agent program this turn belongs to and the tool it calls
        next, for the `continuum` policy."""
        params = params or SamplingParams()
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"priority must be an integer, got {priority!r}")
        for name, value in (("slo_ttft_ms", slo_ttft_ms), ("slo_tpot_ms", slo_tpot_ms)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number of milliseconds, got {value!r}")
        for name, value in (("program_id", program_id), ("tool_call", tool_call)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r}")
        encoded = self.encode_prompt(prompt)
        text, ids = encoded.text, encoded.token_ids
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
        # a cache hit when the server compiled it already (off this thread); GrammarError is a ValueError
        grammar = self.structured.compile(params.structured_outputs) if params.structured_outputs else None
        seqs = []
        for index in range(params.n):
            seq = Request(f"{request_id}#{index}" if params.n > 1 else request_id, ids, params, max_tokens,
                          eos_token_id=self.tokenizer.eos_token_id, prompt=text, index=index, user=user,
                          priority=priority, slo_ttft_ms=slo_ttft_ms, slo_tpot_ms=slo_tpot_ms,
                          program_id=program_id, tool_call=tool_call, group_id=request_id,
                          arrival_order=next(self._order), matcher=grammar.matcher() if grammar is not None else None,
                          chunk_spans=list(encoded.chunk_spans))
            self._text[seq.request_id] = TextState(self.tokenizer, params.stop, params.skip_special_tokens)
            self.requests[seq.request_id] = seq
            seqs.append(seq)
        self.groups[request_id] = seqs
        self.total_prompt_tokens += len(ids)
        self.scheduler.add(seqs[0], forks=seqs[1:])  # the others fork from the first once its prompt is in the cache
        return request_id

    def warm_chunks(self, documents: list[str]) -> dict:
        """Compute the KV of documents ahead of the queries that will cite them (sleep-time
        compute), into the chunk cache; what it cost. Call between steps."""
        if self.runner.blender is None:
            raise ValueError("the chunk cache is off (enable_chunk_cache)")
        if not isinstance(documents, list) or not documents or not all(isinstance(d, str) and d for d in documents):
            raise ValueError("documents must be a non-empty list of non-empty strings")
        t0 = time.perf_counter()
        token_lists = [tuple(self.tokenizer.encode(d)) for d in documents]
        uses, cached = self.kv.reserve_chunks(token_lists)
        computed = False
        try:
            self.runner.blender.fill(uses)
            computed = True
        finally:
            self.kv.store_chunks(uses, computed)
        return {"documents": len(documents), "already_cached": cached, "computed": len(uses),
                "tokens_computed": sum(len(u.tokens) for u in uses),
                "tokens": sum(len(t) for t in token_lists), "seconds": round(time.perf_counter() - t0, 4)}

    def abort_request(self, request_id: str) -> None:
        for seq in self.groups.get(request_id, []):
            self._finish(seq, RequestStatus.FINISHED_ABORTED)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # --- the step -----------------------------------------------------------------------------
    def _stepped_elsewhere(self) -> None:
        """A step on a thread other than the last one. OpenMP keeps a thread team per calling
        thread: a second team on the same cores makes libgomp stop spinning between parallel
        regions, and a decode step (hundreds of short regions) ran ~3x slower on 2 cores
        (benchmarks/engine_thread.py). Said once per engine, where it costs: more than one thread."""
        self._thread = threading.get_ident()
        if not self._warned_thread and self.config.apply_threads() > 1:  # (also sets them on this thread)
            self._warned_thread = True
            warnings.warn("this engine steps on a thread other than the one that loaded it (or stepped it "
                          "before): each thread that runs the C kernels keeps its own OpenMP team, and two "
                          "teams on the same cores can make every step several times slower. Create and use "
                          "the LLM (or engine) on one thread, e.g. a dedicated worker thread.",
                          RuntimeWarning, stacklevel=3)

    def step(self) -> list[Request]:
        """Run one batch; return the sequences that produced a token or finished."""
        t0 = time.perf_counter()
        if threading.get_ident() != self._thread:
            self._stepped_elsewhere()
        clock = self.profiler.clock()
        batch = self.scheduler.schedule()
        clock.scheduled(batch, self.scheduler)
        if batch.empty:
            if self.scheduler.preemptor.settle():
                return []  # a swap-in landed meanwhile: the next step admits it
            if self.scheduler.waiting and not self.scheduler.running:
                # Nothing can run and nothing will free memory: fail loudly rather than spin.
                for seq in list(self.scheduler.waiting):
                    self._finish(seq, RequestStatus.FINISHED_ABORTED)
                raise RuntimeError("the KV cache cannot hold a waiting request even when empty")
            return []
        result = self.runner.execute(batch, self.kv.take_pending_copies(), clock)
        for rid, (logits, first) in result.prompt_logits.items():
            self._record_prompt_logprobs(self.requests[rid], logits, first)
        clock.mark("update")
        requests, sampled = self._sample(result, batch.forks) if result.sample_requests else ([], {})
        clock.mark("sample")
        add_text = self._add_text if clock is NO_CLOCK else self._timed_add_text(clock)
        for request in self.scheduler.update(batch, sampled, add_text):
            self._forget(request)
        if self.press is not None:
            self._press(requests)
        clock.mark("update")
        self.last_step = StepStats(batch.num_tokens, len(batch.scheduled), len(batch.preempted), time.perf_counter() - t0)
        self.profiler.record(clock)
        return requests

    def _sample(self, result, forks) -> tuple[list[Request], dict[str, int]]:
        """One token per request that reached the end of its tokens, and one per child forked from
        such a parent (from a copy of the parent's logits row); logprobs recorded when asked for."""
        requests, logits = result.sample_requests, result.logits
        if forks:
            row = {r.request_id: i for i, r in enumerate(requests)}
            logits = torch.cat([logits, logits[torch.tensor([row[parent.request_id] for parent, _ in forks])]])
            requests = requests + [child for _, child in forks]
        out = self.sampler(logits, requests)
        for request, token, logprob in zip(requests, out.token_ids, out.logprobs):
            if logprob is not None:
                request.output_logprobs.append((token,) + tuple(logprob))
        self.total_generated_tokens += len(requests)
        return requests, {r.request_id: token for r, token in zip(requests, out.token_ids)}

    def _add_text(self, request: Request, token: int) -> str | None:
        """Detokenize a new token; the stop string it completed, if any (the scheduler's stop_string)."""
        return self._text[request.request_id].add(token)

    def _press(self, requests: list[Request]) -> None:
        """Compress each sequence whose prompt just went into the cache (its first token was
        sampled this step), before anything attends to its cache again. A sequence recomputed
        after preemption comes back unpressed; one swapped out keeps its compacted blocks.
        With --kv-press-interval N, a sequence is pressed again each time N entries have been
        added since, back to the size its first press left (its budget)."""
        interval = self.config.kv_press_interval
        for request in requests:
            if request.is_finished:
                continue
            if len(request.output_token_ids) == 1 and not request.num_dropped_tokens:
                compact(self.press, self.kv_cache, self.kv, request, self.model)
                if interval:
                    self._press_budget[request.request_id] = request.num_cached_tokens
            elif interval and request.request_id in self._press_budget:
                budget = self._press_budget[request.request_id]
                if request.num_cached_tokens >= budget + interval:
                    compact(self.press, self.kv_cache, self.kv, request, self.model, keep=budget,
                            max_window=request.num_cached_tokens - budget)

    def _timed_add_text(self, clock):
        """_add_text that charges detokenization to its own phase of the step profile."""
        def add_text(request: Request, token: int) -> str | None:
            clock.mark("update")
            stop = self._add_text(request, token)
            clock.mark("detokenize")
            return stop
        return add_text

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
        self.scheduler.finish(request, status)
        self._forget(request)

    def _forget(self, request: Request) -> None:
        """A finished sequence: its text is complete, and it leaves the unfinished set."""
        self._text[request.request_id].finish()
        self.requests.pop(request.request_id, None)
        self._press_budget.pop(request.request_id, None)

    def text_state(self, request: Request) -> TextState:
        return self._text[request.request_id]

    def release(self, request_id: str) -> None:
        """Forget a finished request group once its output has been read."""
        for seq in self.groups.pop(request_id, []):
            self._text.pop(seq.request_id, None)
            if not seq.is_finished:
                self._finish(seq, RequestStatus.FINISHED_ABORTED)
