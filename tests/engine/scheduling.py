"""Hand-made requests and a model-free step, for the scheduler and policy tests."""

from __future__ import annotations

import itertools

from ember.engine.policies import POLICIES
from ember.engine.scheduler import Scheduler, SchedulerOutput
from ember.kv.manager import KVCacheManager
from ember.request import Request
from ember.sampling_params import SamplingParams

BS = 4
TOKENS = itertools.count(1000)  # fresh token ids: no accidental prefix hits between requests
_arrivals = itertools.count()


def make(num_blocks: int = 64, max_num_seqs: int = 8, budget: int = 16, policy="fcfs", **kw) -> Scheduler:
    policy = POLICIES.create(policy) if isinstance(policy, str) else policy
    return Scheduler(KVCacheManager(num_blocks, BS), policy, max_num_seqs, budget, **kw)


def req(rid: str, prompt_len: int = 0, max_tokens: int = 4, tokens=None, priority: int = 0, user: str | None = None,
        **params) -> Request:
    """A request arriving now (arrival order = creation order)."""
    tokens = list(tokens) if tokens is not None else [next(TOKENS) for _ in range(prompt_len)]
    return Request(rid, tokens, SamplingParams(max_tokens=max_tokens, **params), max_tokens,
                   priority=priority, user=user, arrival_order=next(_arrivals))


def step(s: Scheduler, token: int = 7) -> tuple[SchedulerOutput, list[Request]]:
    """One step as the engine runs it, with `token` sampled for every request that samples."""
    out = s.schedule()
    sampled = {r.request_id: token for r in out.sample_requests}
    sampled.update((child.request_id, token) for _, child in out.forks)
    return out, s.update(out, sampled)


def names(out: SchedulerOutput) -> list[tuple[str, int]]:
    return [(r.request_id, n) for r, n in out.scheduled]


def run(s: Scheduler, max_steps: int = 100) -> list[list[tuple[str, int]]]:
    """Every step's schedule until nothing is left; checks the pool after each step."""
    schedules = []
    while s.num_unfinished:
        out, _ = step(s)
        s.kv.pool.check_consistency()
        schedules.append(names(out))
        assert len(schedules) < max_steps, "the scheduler made no progress"
    return schedules
