"""`continuum`: multi-turn agent programs (Continuum, "Efficient and Robust Multi-Turn LLM
Agent Scheduling with KV Cache Time-to-Live").

A request may carry a `program_id` (its agent program or conversation) and `tool_call`
(the tool the program runs after this turn before it sends the next one). When such a turn
finishes, its KV stays pinned for a time-to-live, so the next turn finds its whole history
cached instead of recomputing it after other requests evicted it; the pin ends when the
next turn is admitted, when the TTL runs out, or earlier if a running or waiting request
needs the blocks (the scheduler gives pins back before it preempts anything).

The TTL weighs the two costs in machine-seconds, over the tool's observed durations D (the
gap between a turn's end and the program's next arrival):

    score(T) = P(D <= T) x recompute(context) - E[min(D, T)] x (blocks pinned / all blocks)

recompute = the steps the context's prefill takes x the step time measured so far; the
second term is the share of the cache held idle while waiting. T is the observed duration
that maximizes the score (no pin when no T scores above 0). A tool seen fewer than
`continuum_min_samples` times gets `continuum_ttl` (the public code's fixed 2 s).

Order: a waiting turn whose program holds a pin goes first; otherwise programs are served
first come, first served by their first turn's arrival (a program's later turns do not go
to the back of the queue). Victims are FCFS's (the newest).
"""

from __future__ import annotations

from collections import defaultdict

from ember.engine.policies.base import POLICIES, SchedulerView
from ember.engine.policies.fcfs import FCFSPolicy
from ember.engine.policies.step_speed import StepSpeed
from ember.request import Request, RequestStatus

DEFAULT_SECONDS_PER_TOKEN = 1e-3  # before any step was measured
MAX_SAMPLES = 256  # durations kept per tool


@POLICIES.register("continuum")
class ContinuumPolicy(FCFSPolicy):
    name = "continuum"

    def __init__(self, config=None):
        super().__init__(config)
        self.default_ttl = getattr(config, "continuum_ttl", 2.0)
        self.min_samples = getattr(config, "continuum_min_samples", 5)
        self.durations: dict[str, list[float]] = defaultdict(list)  # tool -> observed seconds
        self.first_arrival: dict[str, float] = {}  # program -> its first turn's arrival
        self._left: dict[str, tuple[str, float]] = {}  # program -> (tool, when its last turn finished)
        self.speed = StepSpeed()

    # --- arrivals and order -----------------------------------------------------------------
    def on_arrival(self, request: Request) -> None:
        pid = request.program_id
        if pid is None:
            return
        now = request.metrics.arrival_time
        self.first_arrival.setdefault(pid, now)
        left = self._left.pop(pid, None)
        if left is not None:
            tool, finished = left
            samples = self.durations[tool]
            samples.append(max(now - finished, 0.0))
            del samples[:-MAX_SAMPLES]

    def order(self, waiting: list[Request], view: SchedulerView | None = None) -> list[Request]:
        pinned = frozenset()
        if view is not None:
            self.speed.start(view.clock)
            pinned = view.pinned_programs

        def key(r: Request):
            program_start = self.first_arrival.get(r.program_id, r.metrics.arrival_time) \
                if r.program_id is not None else r.metrics.arrival_time
            return (r.num_preemptions == 0, r.program_id not in pinned, program_start, r.arrival_order)
        return sorted(waiting, key=key)

    # --- pins -------------------------------------------------------------------------------
    def keep_kv_for(self, request: Request, view: SchedulerView) -> float:
        if request.program_id is None or not request.tool_call:
            return 0.0
        self._left[request.program_id] = (request.tool_call, view.clock())
        return self.ttl(request.tool_call, request.num_cached_tokens, view)

    def ttl(self, tool: str, context_tokens: int, view: SchedulerView) -> float:
        samples = sorted(self.durations.get(tool, ()))
        if len(samples) < self.min_samples:
            return self.default_ttl
        recompute = self.speed.seconds_for(context_tokens, view.max_num_batched_tokens) if self.speed.step_seconds \
            else context_tokens * DEFAULT_SECONDS_PER_TOKEN
        share = view.blocks_needed(context_tokens) / view.total_blocks
        n, best, best_score = len(samples), 0.0, 0.0
        for k, t in enumerate(samples, start=1):
            held = (sum(samples[:k]) + (n - k) * t) / n  # E[min(D, t)]
            score = k / n * recompute - held * share
            if score > best_score:
                best, best_score = t, score
        return best

    def on_step(self, scheduled: list[tuple[Request, int]]) -> None:
        self.speed.observe(scheduled)

    def on_finish(self, request: Request) -> None:
        pid = request.program_id
        if pid is None:
            return
        if request.status is RequestStatus.FINISHED_ABORTED:
            self._left.pop(pid, None)
        if request.status is RequestStatus.FINISHED_ABORTED or not request.tool_call:
            self.first_arrival.pop(pid, None)  # the program ended (a turn that calls no tool is its last)
