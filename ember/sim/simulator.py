"""The discrete-event loop: arrivals, replicas stepping, KV hand-offs, and what each request saw.

Events: a session's turn arrives (routed to a replica, which starts a step if it is idle); a
replica's step ends (its bookkeeping runs, then its next step starts while it has work); and,
with a prefill pool (disaggregated serving, Splitwise / DistServe), a prompt's KV reaches a
decode replica after its transfer time. The clock only moves from event to event; schedulers and
policies read it through the `clock` they were built with, so request metrics and time-aware
policies see simulated time. Arrivals are read in order from the (sorted) sessions rather than
pushed up front, so the heap holds only step ends, hand-offs and follow-up turns.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import time
from array import array
from dataclasses import dataclass, field

from ember.bench.metrics import RequestResult
from ember.request import Request, RequestMetrics, RequestStatus
from ember.sim.replica import SAMPLED_TOKEN, Replica
from ember.sim.router import make_router
from ember.sim.workload import PARAMS, SimSession, prompt_ids

TOO_BIG = "the KV cache cannot hold a waiting request even when empty"
ARRIVE, STEP, HANDOFF = 0, 1, 2  # event kinds
PROMPT_ONLY = "/p"  # the id suffix of a request's prompt on the prefill pool


@dataclass
class Capacity:
    """What one replica holds (kv/spec.py computes it from the engine and model configs)."""
    num_blocks: int
    block_size: int
    max_model_len: int
    kv_bytes_per_token: float = 0.0  # what a prompt's KV weighs on the link (disaggregated serving)
    max_num_seqs: int = 0  # sequences a step holds, where the KV cache caps --max-num-seqs (0: not capped)


@dataclass
class Disaggregation:
    """A prefill pool in front of the decode pool: each prompt runs on a prefill replica (which
    samples the first token), then its KV crosses a link to a decode replica.

    `prefill_share` set: semi-disaggregated (semi-PD): every machine runs a prefill worker and a
    decode worker side by side with shared weights and one KV store, the prefill worker on that
    share of the machine's compute and the decode worker on the rest. A worker's step takes its
    full-machine time times share^-a, with a = `scaling` (prefill, decode): 1 where a step is
    bound by compute, 0 where it does not care how many cores run it (measure them: the
    step-time ratio at half the threads, log2 of it). A prompt's KV stays where it was
    written: its decode worker is the one on the same machine, and nothing crosses a link."""
    prefill_replicas: int
    link_bytes_per_s: float
    link_latency_s: float = 0.0
    prefill_share: float | None = None
    scaling: tuple[float, float] = (1.0, 1.0)

    @property
    def semi(self) -> bool:
        return self.prefill_share is not None

    def transfer_s(self, tokens: int, bytes_per_token: float) -> float:
        if self.semi:
            return 0.0
        return self.link_latency_s + tokens * bytes_per_token / self.link_bytes_per_s


@dataclass(slots=True)
class Pending:
    """A request in flight: where its figures go, and the output budget it has."""
    result: RequestResult
    session: int
    turn: int
    max_tokens: int
    machine: int = 0  # semi-PD: where its KV lives


@dataclass
class SimStats:
    events: int = 0
    steps: int = 0
    wall_s: float = 0.0
    preemptions: int = 0
    prefix_hit_rate: float = 0.0
    replica_busy_s: list[float] = field(default_factory=list)  # the decode (or only) pool
    prefill_busy_s: list[float] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else 0.0


def check_simulable(config) -> None:
    """Refuse what the simulator does not model (a ValueError), before any slow work."""
    if config.preemption != "recompute":
        raise ValueError(f"preemption={config.preemption!r} is not simulated (only recompute)")
    if config.kv_press:  # a press frees blocks after prefill; the simulator would hold them all
        raise ValueError(f"kv_press={config.kv_press!r} is not simulated")


class Simulator:
    def __init__(self, config, capacity: Capacity, step_seconds, sessions: list[SimSession], replicas: int = 1,
                 router: str = "round-robin", record_batches: bool = False, disagg: Disaggregation | None = None,
                 power=None, layer_groups: int = 1, request_latency_s: float = 0.0):
        """`config`: the EngineConfig every replica runs; `step_seconds(prefill, decode, context,
        seqs, prefill_attention)`: the step-time model (plus any per-step overhead); `replicas`: the decode pool when
        `disagg` adds a prefill pool, else the replicas that do both; `power`: a PowerModel for
        every replica (energy, power caps); `layer_groups` > 1: layered prefill (replica.py);
        `request_latency_s`: what a request spends outside the engine (HTTP, chat template,
        tokenizing, the first token's delivery): each reaches the scheduler that much after it
        was sent, and its latencies count from when it was sent."""
        if not request_latency_s >= 0:
            raise ValueError(f"request_latency_s must be a non-negative number of seconds, got {request_latency_s}")
        self.request_latency_s = request_latency_s
        if replicas < 1:
            raise ValueError(f"--replicas must be at least 1, got {replicas}")
        if disagg is not None and (disagg.prefill_replicas < 1 or not disagg.link_bytes_per_s > 0):
            raise ValueError("a prefill pool needs at least one replica and a positive link bandwidth")
        if disagg is not None and disagg.semi and (not 0 < disagg.prefill_share < 1
                                                   or disagg.prefill_replicas != replicas):
            raise ValueError("semi-PD needs a prefill share in (0, 1) and one prefill worker per machine")
        check_simulable(config)
        if layer_groups < 1:
            raise ValueError(f"--layered-prefill must be at least 1 layer group, got {layer_groups}")
        self.now = 0.0
        if capacity.max_num_seqs and capacity.max_num_seqs < config.max_num_seqs:  # as the engine caps it
            config = dataclasses.replace(config, max_num_seqs=capacity.max_num_seqs)
        self.capacity, self.disagg = capacity, disagg
        clock = lambda: self.now  # noqa: E731  (what every scheduler and policy reads as "now")
        pool = lambda n, first, step: [Replica(first + i, config, capacity.num_blocks, capacity.block_size, clock,  # noqa: E731
                                               step, record_batches, power, layer_groups) for i in range(n)]
        decode_step = prefill_step = step_seconds
        if disagg is not None and disagg.semi:
            slow_p = disagg.prefill_share ** -disagg.scaling[0]
            slow_d = (1.0 - disagg.prefill_share) ** -disagg.scaling[1]
            prefill_step = lambda *batch: step_seconds(*batch) * slow_p  # noqa: E731
            decode_step = lambda *batch: step_seconds(*batch) * slow_d  # noqa: E731
        self.replicas = pool(replicas, 0, decode_step)
        self.prefill_pool = pool(disagg.prefill_replicas, replicas, prefill_step) if disagg else []
        self.router, self.prefill_router = make_router(router), make_router(router)
        self.sessions = sessions
        self.results: list[list[RequestResult]] = [[] for _ in sessions]
        self._live: dict[str, Pending] = {}  # request id -> its pending record
        self._events: list[tuple] = []  # (time, seq, kind, payload)
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
        events, sessions, nxt, n, wake = self._events, self.sessions, 0, len(self.sessions), self._wake
        late = self.request_latency_s
        while nxt < n or events:
            if nxt < n and (not events or sessions[nxt].arrival_s + late <= events[0][0]):
                self.now = sessions[nxt].arrival_s + late
                self._arrive(nxt, 0, None, on_done)
                nxt += 1
            else:
                self.now, _, kind, payload = heapq.heappop(events)
                if kind == STEP:
                    self._end_step(payload, on_done)
                elif kind == ARRIVE:
                    self._arrive(*payload, on_done)
                else:
                    self._handoff(*payload, on_done)
            stats.events += 1
            if wake:
                following = min(sessions[nxt].arrival_s + late if nxt < n else math.inf,
                                events[0][0] if events else math.inf)
                if following > self.now:  # everything of this instant is in: idle replicas start
                    for replica in sorted(wake, key=lambda r: r.index):
                        self._start_step(replica, on_done)
                    wake.clear()
        if self._live:  # a replica went idle with requests it never ran: a bug, not a result
            raise RuntimeError(f"the simulation stalled with {len(self._live)} requests unfinished")
        stats.wall_s = time.perf_counter() - t0
        everyone = self.replicas + self.prefill_pool
        stats.steps = sum(r.num_steps for r in everyone)
        stats.preemptions = sum(r.scheduler.num_preemptions for r in everyone)
        queries = sum(r.scheduler.kv.stats.queries for r in everyone)
        stats.prefix_hit_rate = sum(r.scheduler.kv.stats.hits for r in everyone) / queries if queries else 0.0
        stats.replica_busy_s = [r.busy_s for r in self.replicas]
        stats.prefill_busy_s = [r.busy_s for r in self.prefill_pool]
        flat = [r for rs in self.results for r in rs]
        duration = max((r.end for r in flat), default=0.0)  # the first arrival is at 0
        return flat, duration, stats

    def _arrive(self, k: int, t: int, history: list[int] | None, on_done) -> None:
        session, turn = self.sessions[k], self.sessions[k].turns[t]
        sent = self.now - self.request_latency_s
        result = RequestResult(False, sent, scheduled=sent, user=session.user, session=k, turn=t,
                               chunk_times=array("d"))  # 8 bytes a token, not a float object's 32
        self.results[k].append(result)
        ids = prompt_ids(turn, history, next(self._seq))
        result.prompt_tokens = len(ids)
        limit = self.capacity.max_model_len
        if len(ids) >= limit:
            self._fail(result, k, t, f"the prompt has {len(ids)} tokens; this engine holds at most {limit} "
                                     "tokens per sequence (prompt + output)", on_done)
            return
        pending = Pending(result, k, t, min(turn.output_tokens, limit - len(ids)))
        if self.prefill_pool:  # the prompt alone: one token, then the KV moves on
            request = self._request(f"{k}.{t}{PROMPT_ONLY}", ids, 1, pending)
            pool, router = self.prefill_pool, self.prefill_router
            if self.disagg.semi:  # its machine's decode worker will hold the KV
                pending.machine = router.pick(pool, request)
                replica = pool[pending.machine]
                replica.scheduler.add(request)
                if not replica.busy:
                    self._wake.add(replica)
                return
        else:
            request = self._request(f"{k}.{t}", ids, pending.max_tokens, pending)
            pool, router = self.replicas, self.router
        replica = pool[router.pick(pool, request)]
        replica.scheduler.add(request)
        if not replica.busy:
            self._wake.add(replica)  # its step starts once every arrival of this instant is queued

    def _request(self, rid: str, ids: list[int], max_tokens: int, pending: Pending, **state) -> Request:
        turn = self.sessions[pending.session].turns[pending.turn]
        self._live[rid] = pending
        return Request(rid, ids, PARAMS, max_tokens, user=self.sessions[pending.session].user,
                       program_id=turn.extra.get("program_id"), tool_call=turn.extra.get("tool_call"), group_id=rid,
                       arrival_order=next(self._order), metrics=RequestMetrics(pending.result.start), **state)

    def _start_step(self, replica: Replica, on_done) -> None:
        seconds = replica.start_step()
        if seconds is not None:
            heapq.heappush(self._events, (self.now + seconds, next(self._seq), STEP, replica))
        elif replica.scheduler.waiting and not replica.scheduler.running:
            for request in replica.abort_waiting():
                self._fail_request(request, on_done)

    def _end_step(self, replica: Replica, on_done) -> None:
        samplers, finished = replica.end_step()
        now, live = self.now, self._live
        for request in samplers:
            live[request.request_id].result.chunk_times.append(now)
        for request in finished:
            self._finish(request, on_done)
        if replica.inbox:
            for request in replica.take_inbox():
                self._fail_request(request, on_done)
        if replica.has_work:
            self._wake.add(replica)  # as the engine's loop: what arrives as this step ends joins the next

    def _finish(self, request: Request, on_done) -> None:
        pending = self._live.pop(request.request_id)
        ok = request.status in (RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_STOPPED)
        if ok and request.request_id.endswith(PROMPT_ONLY) and pending.max_tokens > 1:
            delay = self.disagg.transfer_s(request.num_prompt_tokens, self.capacity.kv_bytes_per_token)
            heapq.heappush(self._events, (self.now + delay, next(self._seq), HANDOFF,
                                          (pending, request.prompt_token_ids)))
            return
        result = pending.result
        result.end, result.success, result.output_tokens = self.now, ok, len(request.output_token_ids)
        if on_done is not None:
            on_done(result)
        turns = self.sessions[pending.session].turns
        if pending.turn + 1 < len(turns):  # the conversation goes on after the user's (or the tool's) pause
            heapq.heappush(self._events, (self.now + turns[pending.turn + 1].think_s + self.request_latency_s,
                                          next(self._seq), ARRIVE,
                                          (pending.session, pending.turn + 1, request.all_token_ids)))

    def _handoff(self, pending: Pending, ids: list[int], on_done) -> None:
        """The prompt's KV and first token reach a decode replica: it decodes from there."""
        request = self._request(f"{pending.session}.{pending.turn}", ids, pending.max_tokens, pending,
                                output_token_ids=[SAMPLED_TOKEN], num_computed_tokens=len(ids))
        replica = self.replicas[pending.machine if self.disagg.semi else self.router.pick(self.replicas, request)]
        for never in replica.receive(request):
            self._fail_request(never, on_done)
        if not replica.busy and replica.has_work:
            self._wake.add(replica)

    def _fail_request(self, request: Request, on_done) -> None:
        pending = self._live.pop(request.request_id)
        self._fail(pending.result, pending.session, pending.turn, TOO_BIG, on_done)

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
