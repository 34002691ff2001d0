"""Policies through the real scheduler, without a model: priority order and preemption, FCFS
unchanged, the admission hook's SKIP and STOP, what the view shows, and on_step's counts."""

from __future__ import annotations

import pytest

from ember.engine.policies import POLICIES, Admission, PreemptReason
from ember.engine.policies.fcfs import FCFSPolicy
from ember.engine.policies.priority import PriorityPolicy
from ember.engine.scheduler import SchedulerOutput
from ember.request import RequestStatus
from tests.engine.scheduling import BS, TOKENS, make, names, req, run, step


def test_priority_orders_waiting_by_priority_then_arrival():
    def schedules(policy):
        s = make(policy=policy, budget=4)
        for rid, priority in (("a", 0), ("b", -1), ("c", -1), ("d", 5)):
            s.add(req(rid, 4, max_tokens=1, priority=priority))
        return run(s)

    assert schedules("priority") == [[("b", 4)], [("c", 4)], [("a", 4)], [("d", 4)]]
    assert schedules("fcfs") == [[("a", 4)], [("b", 4)], [("c", 4)], [("d", 4)]]


def test_fcfs_puts_preempted_requests_first():
    old, new, preempted = req("old", 1), req("new", 1), req("preempted", 1)
    preempted.num_preemptions = 1  # arrived last, but already ran
    assert FCFSPolicy().order([new, preempted, old]) == [preempted, old, new]
    assert FCFSPolicy().victim([old, new], PreemptReason.PRIORITY, waiting=preempted) is None


def test_a_higher_priority_arrival_preempts_the_lowest_priority_running_request():
    s = make(policy="priority", max_num_seqs=1)
    low = req("low", 4, max_tokens=3, priority=1)
    s.add(low)
    step(s)
    high = req("high", 4, max_tokens=1, priority=0)
    s.add(high)
    out, _ = step(s)
    # low was scheduled for its decode, then gave way: its token comes back to the budget
    assert names(out) == [("high", 4)] and out.preempted == [low]
    assert low.status is RequestStatus.PREEMPTED and low.block_ids == [] and low.num_computed_tokens == 0
    # back after high: its prompt block is still cached, so only its generated token is recomputed
    assert run(s) == [[("low", 1)], [("low", 1)]] and len(low.output_token_ids) == 3
    assert s.kv.pool.num_used_blocks == 0


@pytest.mark.parametrize("policy, low_priority, preempts", [
    ("priority", 1, True),
    ("priority", 0, False),  # equal priorities never preempt each other
    ("fcfs", 1, False),  # FCFS never preempts for priority
])
def test_priority_preemption_needs_a_strictly_better_priority(policy, low_priority, preempts):
    s = make(policy=policy, max_num_seqs=1)
    low = req("low", 4, max_tokens=3, priority=low_priority)
    s.add(low)
    step(s)
    s.add(req("high", 4, priority=0))
    out = s.schedule()
    assert names(out) == ([("high", 4)] if preempts else [("low", 1)])
    assert [r.request_id for r in out.preempted] == (["low"] if preempts else [])


def test_priority_preemption_for_blocks():
    s = make(policy="priority", num_blocks=3)
    low = req("low", 8, max_tokens=4, priority=3)  # both blocks it fills stay held
    s.add(low)
    step(s)
    high = req("high", 6, priority=-2)  # needs 2 blocks, 1 is free
    s.add(high)
    out = s.schedule()
    assert names(out) == [("high", 6)] and out.preempted == [low]
    assert s.kv.pool.num_used_blocks == 2


@pytest.mark.parametrize("policy, victim", [("priority", "old_low"), ("fcfs", "new_high")])
def test_victim_under_kv_pressure(policy, victim):
    """old_low is scheduled first (oldest); then new_high needs a block and none is free."""
    s = make(policy=policy, num_blocks=4, budget=64)
    old_low, new_high = req("old_low", 6, max_tokens=8, priority=2), req("new_high", 7, max_tokens=8)
    s.add(old_low)
    s.add(new_high)
    step(s)
    step(s)
    out = s.schedule()
    assert [r.request_id for r in out.preempted] == [victim]
    # priority: old_low had been scheduled this step; it is taken out of the batch again
    assert names(out) == ([("new_high", 1)] if victim == "old_low" else [("old_low", 1)])
    s.kv.pool.check_consistency()
    assert sum(len(r.block_ids) for r, _ in out.scheduled) == s.kv.pool.num_used_blocks


def test_priority_victim_is_the_largest_priority_then_arrival():
    a, b, c = req("a", 1, priority=1), req("b", 1, priority=3), req("c", 1, priority=3)
    policy = PriorityPolicy()
    assert policy.victim([a, b, c], PreemptReason.KV_PRESSURE) is c
    assert policy.victim([a, b, c], PreemptReason.PRIORITY, waiting=req("w", 1, priority=2)) is c
    assert policy.victim([a], PreemptReason.PRIORITY, waiting=req("w", 1, priority=1)) is None


class Scripted(FCFSPolicy):
    """FCFS, except that `admit` answers from a script and keeps every view it was shown."""

    def __init__(self, answers: dict[str, Admission]):
        self.answers, self.views = answers, []

    def admit(self, request, view):
        self.views.append((request.request_id, view))
        return self.answers.get(request.request_id, Admission.ADMIT)


@pytest.mark.parametrize("answer, expected", [
    (Admission.SKIP, [("a", 4), ("c", 4)]),
    (Admission.STOP, [("a", 4)]),
    (Admission.ADMIT, [("a", 4), ("b", 4), ("c", 4)]),
])
def test_admission_skip_and_stop_are_honoured(answer, expected):
    s = make(policy=Scripted({"b": answer}), budget=100)
    for rid in "abc":
        s.add(req(rid, 4))
    assert names(s.schedule()) == expected
    assert [r.request_id for r in s.waiting] == [rid for rid in "abc" if (rid, 4) not in expected]


def test_the_view_shows_blocks_running_and_budget_and_peeks_without_side_effects():
    prompt = [next(TOKENS) for _ in range(9)]
    policy = Scripted({})
    s = make(policy=policy, num_blocks=10, budget=20)
    s.add(req("warm", tokens=prompt, max_tokens=1))
    step(s)  # its two full blocks are now cached
    queries = s.kv.stats.queries
    a, b = req("a", 4), req("b", tokens=prompt[:8] + [5])
    s.add(a)
    s.add(b)
    policy.views.clear()
    s.schedule()
    (_, va), (_, vb) = policy.views
    assert (va.free_blocks, va.token_budget, va.running, va.block_size, va.max_num_seqs) == (10, 20, (), 4, 8)
    assert (vb.free_blocks, vb.token_budget, vb.running) == (9, 16, (a,))
    assert vb.peek_prefix(b) == 8 and va.peek_prefix(a) == 0 and vb.blocks_needed(9) == 3
    assert s.kv.stats.queries == queries + a.num_tokens + b.num_tokens  # only the two admissions counted
    with pytest.raises(AttributeError):
        va.free_blocks = 0  # read-only


class Recording(FCFSPolicy):
    def __init__(self):
        self.steps, self.finished = [], []

    def on_step(self, scheduled):
        self.steps.append([(r.request_id, n) for r, n in scheduled])

    def on_finish(self, request):
        self.finished.append(request.request_id)


def test_on_step_sees_what_each_request_computed():
    policy = Recording()
    s = make(policy=policy, budget=6)
    s.add(req("a", 9, max_tokens=2))
    s.add(req("b", 2, max_tokens=1))
    schedules = run(s)
    assert policy.steps == schedules == [[("a", 6)], [("a", 3), ("b", 2)], [("a", 1)]]
    assert policy.finished == ["b", "a"]


def test_an_unknown_policy_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown scheduling policy .nope.; choose one of: batchllm, conservative, continuum, fcfs"):
        POLICIES.create("nope")


def test_a_swap_in_under_way_is_passed_over_not_made_room_for():
    """FastSwitch: a preempted request whose KV is being copied back waits without blocking the
    queue behind it or preempting anyone; a later step admits it with its tokens intact."""
    from ember.kv.cache import PagedKVCache
    from ember.kv.fastswitch import FastSwitchPreemptor

    cache = PagedKVCache.create(1, 64, BS, num_kv_heads=1, head_dim=4)
    fs = FastSwitchPreemptor(cache, num_host_blocks=16)
    s = make(policy="fcfs", num_blocks=64, budget=64, preemptor=fs)
    x = req("x", 9, max_tokens=4)
    s.add(x)
    step(s)
    s._preempt(x, SchedulerOutput())  # as a preemption does, mid-schedule
    assert x.status is RequestStatus.PREEMPTED and fs.stats.swapped_out == 1 and x.num_computed_tokens == 0
    y = req("y", 5, max_tokens=1)
    s.add(y)
    out = s.schedule()
    assert names(out) == [("y", 5)] and not out.preempted and fs.in_flight(x)
    assert s.preemptor.settle()
    s.update(out, {"y": 7})
    out, _ = step(s)
    assert names(out) == [("x", 1)] and x.num_computed_tokens == 10 and fs.stats.swapped_in == 1
    run(s)
    assert s.kv.pool.num_used_blocks == 0 and not fs.inflight
