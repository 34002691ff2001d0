"""The discrete-event loop: arrivals, replicas stepping, and what each request saw.

Two kinds of event: a session's turn arrives (routed to a replica, which starts a step if it is
idle), and a replica's step ends (its bookkeeping runs, then its next step starts at once while it
has work). The clock only moves from event to event; the schedulers and policies read it through
the `clock` they were built with, so request metrics and time-aware policies see simulated time.
Arrivals are read in order from the (sorted) sessions rather than pushed up front, so the heap
holds only step ends and follow-up turns: a million-request run keeps a small heap.
"""

from __future__ import annotations

import heapq
from array import array
import itertools
import math
import time
from dataclasses import dataclass, field

from ember.bench.metrics import RequestResult
from ember.request import Request, RequestMetrics, RequestStatus
from ember.sampling_params import SamplingParams
from ember.sim.replica import Replica
from ember.sim.router import make_router
from ember.sim.workload import SimSession

PREFIX_BASE = 1 << 40  # token ids of shared prefix blocks: PREFIX_BASE + id, then filler
UNIQUE_BASE = 1 << 50  # the first token of each new message: unique, so no false prefix hits
FILLER = 2
PARAMS = SamplingParams(max_tokens=None, ignore_eos=True)  # one shared object: the sim never samples
TOO_BIG = "the KV cache cannot hold a waiting request even when empty"


@dataclass
class Capacity:
    """What one replica holds (kv/spec.py computes it from the engine and model configs)."""
    num_blocks: int
    block_size: int
    max_model_len: int


@dataclass
class SimStats:
    events: int = 0
    steps: int = 0
    wall_s: float = 0.0
    preemptions: int = 0
    prefix_hit_rate: float = 0.0
    replica_busy_s: list[float] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else 0.0


def check_simulable(config) -> None:
    """Refuse what the simulator does not model (a ValueError), before any slow work."""
    if config.preemption != "recompute":
        raise ValueError(f"preemption={config.preemption!r} is not simulated (only recompute)")


class Simulator:
    def __init__(self, config, capacity: Capacity, step_seconds, sessions: list[SimSession], replicas: int = 1,
                 router: str = "round-robin", record_batches: bool = False):
        """`config`: the EngineConfig every replica runs; `step_seconds(prefill, decode, context,
        seqs)`: the step-time model (plus any per-step overhead)."""
        if replicas < 1:
            raise ValueError(f"--replicas must be at least 1, got {replicas}")
        check_simulable(config)
        self.now = 0.0
        self.capacity = capacity
        clock = lambda: self.now  # noqa: E731  (what every scheduler and policy reads as "now")
        self.replicas = [Replica(i, config, capacity.num_blocks, capacity.block_size, clock, step_seconds,
                                 record_batches) for i in range(replicas)]
        self.router = make_router(router)
        self.sessions = sessions
        self.results: list[list[RequestResult]] = [[] for _ in sessions]
        self._live: dict[str, tuple[RequestResult, int, int]] = {}  # request id -> (result, session, turn)
        self._events: list[tuple] = []  # (time, seq, replica index or None, (session, turn, history))
        self._seq = itertools.count()
        self._order = itertools.count()
        self._wake: set[Replica] = set()  # idle replicas that got work at the current instant

    @property
    def num_requests(self) -> int:
        return sum(len(s.turns) for s in self.sessions)

    # --- the loop -----------------------------------------------------------------------------
    def run(self, on_done=None) -> tuple[list[RequestResult], float, SimStats]:
        """Simulate every session to its end: (results in session order, duration, stats)."""
        t0 = time.perf_counter()
        stats = SimStats()
        events, sessions, nxt, n = self._events, self.sessions, 0, len(self.sessions)
        wake = self._wake
        while nxt < n or events:
            if nxt < n and (not events or sessions[nxt].arrival_s <= events[0][0]):
                self.now = sessions[nxt].arrival_s
                self._arrive(nxt, 0, None, on_done)
                nxt += 1
            else:
                self.now, _, replica, turn = heapq.heappop(events)
                if replica is None:
                    self._arrive(*turn, on_done)
                else:
                    self._end_step(self.replicas[replica], on_done)
            stats.events += 1
            if wake:
                following = min(sessions[nxt].arrival_s if nxt < n else math.inf, events[0][0] if events else math.inf)
                if following > self.now:  # everything of this instant is in: idle replicas start
                    for replica in sorted(wake, key=lambda r: r.index):
                        self._start_step(replica, on_done)
                    wake.clear()
        if self._live:  # a replica went idle with requests it never ran: a bug, not a result
            raise RuntimeError(f"the simulation stalled with {len(self._live)} requests unfinished")
        stats.wall_s = time.perf_counter() - t0
        stats.steps = sum(r.num_steps for r in self.replicas)
        stats.preemptions = sum(r.scheduler.num_preemptions for r in self.replicas)
        queries = sum(r.scheduler.kv.stats.queries for r in self.replicas)
        stats.prefix_hit_rate = sum(r.scheduler.kv.stats.hits for r in self.replicas) / queries if queries else 0.0
        stats.replica_busy_s = [r.busy_s for r in self.replicas]
        flat = [r for rs in self.results for r in rs]
        duration = max((r.end for r in flat), default=0.0)  # the first arrival is at 0
        return flat, duration, stats

    def _arrive(self, k: int, t: int, history: list[int] | None, on_done) -> None:
        session, turn = self.sessions[k], self.sessions[k].turns[t]
        result = RequestResult(False, self.now, scheduled=self.now, user=session.user, session=k, turn=t,
                               chunk_times=array("d"))  # 8 bytes a token, not a float object's 32
        self.results[k].append(result)
        ids = self._prompt(turn, history)
        result.prompt_tokens = len(ids)
        limit = self.capacity.max_model_len
        if len(ids) >= limit:
            self._fail(result, k, t, f"the prompt has {len(ids)} tokens; this engine holds at most {limit} "
                                     "tokens per sequence (prompt + output)", on_done)
            return
        rid = f"{k}.{t}"
        request = Request(rid, ids, PARAMS, min(turn.output_tokens, limit - len(ids)), user=session.user,
                          program_id=turn.extra.get("program_id"), tool_call=turn.extra.get("tool_call"),
                          group_id=rid, arrival_order=next(self._order), metrics=RequestMetrics(self.now))
        self._live[rid] = (result, k, t)
        replica = self.replicas[self.router.pick(self.replicas, request)]
        replica.scheduler.add(request)
        if not replica.busy:
            self._wake.add(replica)  # its step starts once every arrival of this instant is queued

    def _prompt(self, turn, history: list[int] | None) -> list[int]:
        """Token ids: the history (earlier turns and replies) or the shared prefix blocks, then the new message."""
        if history is not None:
            ids = list(history)
        else:
            ids = []
            for h in turn.prefix_ids:
                ids.append(PREFIX_BASE + h)
                ids.extend([FILLER] * (turn.prefix_block_tokens - 1))
        if turn.prompt_tokens:
            ids.append(UNIQUE_BASE + next(self._seq))
            ids.extend([FILLER] * (turn.prompt_tokens - 1))
        return ids

    def _start_step(self, replica: Replica, on_done) -> None:
        seconds = replica.start_step()
        if seconds is not None:
            heapq.heappush(self._events, (self.now + seconds, next(self._seq), replica.index, None))
        elif replica.scheduler.waiting and not replica.scheduler.running:
            for request in replica.abort_waiting():
                result, k, t = self._live.pop(request.request_id)
                self._fail(result, k, t, TOO_BIG, on_done)

    def _end_step(self, replica: Replica, on_done) -> None:
        samplers, finished = replica.end_step()
        now = self.now
        live = self._live
        for request in samplers:
            live[request.request_id][0].chunk_times.append(now)
        for request in finished:
            self._finish(request, on_done)
        if replica.scheduler.num_unfinished:
            self._wake.add(replica)  # as the engine's loop: what arrives as this step ends joins the next

    def _finish(self, request: Request, on_done) -> None:
        result, k, t = self._live.pop(request.request_id)
        result.end = self.now
        result.success = request.status in (RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_STOPPED)
        result.output_tokens = len(request.output_token_ids)
        if on_done is not None:
            on_done(result)
        turns = self.sessions[k].turns
        if t + 1 < len(turns):  # the conversation goes on after the user's (or the tool's) pause
            heapq.heappush(self._events, (self.now + turns[t + 1].think_s, next(self._seq), None,
                                          (k, t + 1, request.all_token_ids)))

    def _fail(self, result: RequestResult, k: int, t: int, error: str, on_done) -> None:
        """A request the engine would refuse; the rest of its conversation is never sent."""
        result.end, result.error = self.now, error
        if on_done is not None:
            on_done(result)
        for later in range(t + 1, len(self.sessions[k].turns)):
            lost = RequestResult(False, self.now, scheduled=self.now, end=self.now, user=self.sessions[k].user,
                                 session=k, turn=later, error="not sent: an earlier turn of its conversation failed")
            self.results[k].append(lost)
            if on_done is not None:
                on_done(lost)
