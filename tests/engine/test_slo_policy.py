"""The `slo` policy through the real scheduler, without a model: deadline order, deferral of
what can no longer meet its deadline, requests without targets last, defaults from the
config, the measured prefill speed, and the victim with the most slack."""

from __future__ import annotations

import itertools

from ember.config import EngineConfig
from ember.engine.policies import POLICIES, PreemptReason
from ember.engine.policies.slo import SLOPolicy
from tests.engine.scheduling import make, req, run


class Clock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def timed(rid, arrival, ttft_ms=0.0, tpot_ms=0.0, prompt=4, max_tokens=1):
    r = req(rid, prompt, max_tokens=max_tokens)
    r.metrics.arrival_time, r.slo_ttft_ms, r.slo_tpot_ms = arrival, ttft_ms, tpot_ms
    return r


def test_earliest_deadline_first_and_requests_without_targets_last():
    clock = Clock(10.0)
    s = make(policy="slo", budget=4, max_num_seqs=1, clock=clock)
    s.add(timed("none", 9.0))
    s.add(timed("loose", 9.5, ttft_ms=5000))   # due 14.5
    s.add(timed("tight", 9.9, ttft_ms=1000))   # due 10.9
    s.add(timed("mid", 9.0, ttft_ms=3000))     # due 12.0
    assert [sched[0][0] for sched in run(s)] == ["tight", "mid", "loose", "none"]


def test_a_request_that_cannot_meet_its_deadline_is_deferred_behind_those_that_can():
    clock = Clock(10.0)
    policy = SLOPolicy()
    policy.speed.step_seconds = 0.4  # a 4-token prompt takes one step at a budget of 4
    s = make(policy=policy, budget=4, max_num_seqs=1, clock=clock)
    s.add(timed("late", 9.0, ttft_ms=1300))    # due 10.3: cannot make it
    s.add(timed("ontime", 9.0, ttft_ms=2000))  # due 11.0
    s.add(timed("none", 8.0))
    s.add(timed("late2", 8.0, ttft_ms=1000))   # already past
    ordered = [r.request_id for r in policy.order(list(s.waiting), s.view(4))]
    # a request without a target can always be served in time; the two that cannot make it
    # follow, in arrival order
    assert ordered == ["ontime", "none", "late", "late2"]
    policy.speed.step_seconds = 0.0  # at infinite speed "late" could still make it
    assert [r.request_id for r in policy.order(list(s.waiting), s.view(4))] == ["late", "ontime", "none", "late2"]


def test_a_request_must_make_its_deadline_after_the_prompts_ordered_before_it():
    clock = Clock(10.0)
    policy = SLOPolicy()
    policy.speed.step_seconds = 0.4
    s = make(policy=policy, budget=4, clock=clock)
    s.add(timed("first", 9.0, ttft_ms=1500))   # due 10.5: one step, done at 10.4
    s.add(timed("second", 9.0, ttft_ms=1700))  # due 10.7: after first, two steps: 10.8
    s.add(timed("third", 9.0, ttft_ms=2300))   # due 11.3: after first (second deferred), 10.8
    assert [r.request_id for r in policy.order(list(s.waiting), s.view(4))] == ["first", "third", "second"]


def test_defaults_come_from_the_config_and_a_preempted_request_is_due_by_its_tpot():
    policy = POLICIES.create("slo", EngineConfig(policy="slo", slo_ttft_ms=2000, slo_tpot_ms=100))
    fresh, own = timed("fresh", 5.0), timed("own", 5.0, ttft_ms=500)
    assert policy.deadline(fresh) == 7.0 and policy.deadline(own) == 5.5
    fresh.metrics.first_token_time, fresh.metrics.last_token_time = 6.0, 6.5
    assert abs(policy.deadline(fresh) - 6.6) < 1e-9


def test_prefill_speed_is_measured_from_the_steps():
    ticks = itertools.count(0.0, 0.5)  # each clock read moves time on by half a second
    policy = SLOPolicy()
    s = make(policy=policy, budget=8, clock=lambda: next(ticks))
    s.add(timed("a", 0.0, prompt=8))
    run(s)
    assert policy.speed.step_seconds > 0


def test_the_victim_is_the_request_with_the_most_slack():
    policy = SLOPolicy()
    tight, loose, none = timed("tight", 0.0, ttft_ms=100), timed("loose", 0.0, ttft_ms=900), timed("none", 0.0)
    assert policy.victim([tight, loose, none], PreemptReason.KV_PRESSURE) is none
    assert policy.victim([tight, loose], PreemptReason.KV_PRESSURE) is loose
    assert policy.victim([tight, loose], PreemptReason.PRIORITY, waiting=none) is None
