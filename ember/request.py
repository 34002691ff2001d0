"""Request: one sequence being generated, and the states it moves through.

waiting -> running -> finished, with running -> waiting again on preemption (its KV is
freed and recomputed later, or swapped out), and an abort path from every state.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ember.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED)


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # resolved: params.max_tokens capped by the context length
    eos_token_id: int | None = None
    prompt: str | None = None
    index: int = 0  # which of the n sequences of one prompt this is
    user: str | None = None
    priority: int = 0  # lower runs sooner under the `priority` policy (vLLM's convention)
    slo_ttft_ms: float = 0.0  # latency targets for the `slo` policy; 0: the engine's default
    slo_tpot_ms: float = 0.0
    program_id: str | None = None  # the agent program (conversation) this turn belongs to
    tool_call: str | None = None  # the tool the program calls after this turn (it comes back later)
    group_id: str = ""  # the user-facing request id shared by the n sequences of one prompt
    arrival_order: int = 0  # set by the engine: ties in arrival time break by this
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens run through the model: the next RoPE position
    num_dropped_tokens: int = 0  # of those, entries taken out of the cache (a press, a window)
    block_ids: list[int] = field(default_factory=list)
    # prompt token ranges marked as reusable chunks (documents): their KV may come from the
    # chunk cache wherever they stand (kv/chunks.py); `blend` is the plan for this step's
    # admission, set by the KV manager and consumed by the model runner
    chunk_spans: list[tuple[int, int]] = field(default_factory=list)
    blend: Any = None
    num_preemptions: int = 0
    stop_reason: int | str | None = None
    output_logprobs: list = field(default_factory=list)
    prompt_logprobs: list = field(default_factory=list)
    generator: torch.Generator | None = None
    # structured outputs: this sequence's GrammarMatcher (ember/structured/backend.py), which
    # follows output_token_ids (so recompute after preemption leaves it right)
    matcher: Any = None
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(time.monotonic()))

    def __post_init__(self) -> None:
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed + self.index)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_cached_tokens(self) -> int:
        """KV entries the request holds: its cache index space, apart from its positions."""
        return self.num_computed_tokens - self.num_dropped_tokens

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        p = len(self.prompt_token_ids)
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:
            return self.output_token_ids[start - p:end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - p]

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    @property
    def finish_reason(self) -> str | None:
        return self.status.value if self.status.finished else None
