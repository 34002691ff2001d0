"""Continuum through the real scheduler, without a model: a tool-call turn's KV stays pinned
until the next turn takes it, until its TTL runs out, or until someone needs the blocks;
the TTL from observed tool durations; program-level FCFS with pinned programs first; no
block left behind."""

from __future__ import annotations

from ember.config import EngineConfig
from ember.engine.policies import POLICIES
from ember.engine.policies.continuum import ContinuumPolicy
from ember.request import RequestStatus
from tests.engine.scheduling import make, names, req, run


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def turn(rid, program, tool=None, tokens=None, prompt=12, max_tokens=2, at=0.0):
    r = req(rid, prompt if tokens is None else 0, max_tokens=max_tokens, tokens=tokens)
    r.program_id, r.tool_call, r.metrics.arrival_time = program, tool, at
    return r


def first_turn(s, clock, tool="search"):
    t1 = turn("t1", "job", tool=tool)
    s.add(t1)
    run(s)
    return t1


def test_a_tool_call_turn_stays_pinned_until_the_next_turn_takes_its_kv():
    clock = Clock()
    s = make(policy=ContinuumPolicy(), clock=clock)
    t1 = first_turn(s, clock)
    pinned = s.pins["job"].blocks
    assert len(pinned) == 3 and s.kv.pool.num_used_blocks == 3  # 12 prompt + 1 computed output: 3 full blocks
    clock.t = 1.0
    t2 = turn("t2", "job", tokens=t1.all_token_ids + [5, 6, 7], at=1.0)
    s.add(t2)
    out = s.schedule()
    assert names(out) == [("t2", 17 - 12)] and "job" not in s.pins  # 12 tokens found cached
    s.update(out, {"t2": 7})
    run(s)
    assert s.kv.pool.num_used_blocks == 0 and not s.pins


def test_a_pin_expires_after_its_ttl():
    clock = Clock()
    s = make(policy=POLICIES.create("continuum", EngineConfig(policy="continuum", continuum_ttl=3.0)), clock=clock)
    first_turn(s, clock)
    assert s.pins["job"].expires == 3.0
    clock.t = 2.9
    s.schedule()
    assert "job" in s.pins
    clock.t = 3.0
    s.schedule()
    assert not s.pins and s.kv.pool.num_used_blocks == 0
    s.kv.pool.check_consistency()


def test_no_pin_without_a_tool_call_or_a_program():
    clock = Clock()
    s = make(policy="continuum", clock=clock)
    s.add(turn("last", "job", tool=None))
    s.add(req("plain", 12, max_tokens=2))
    run(s)
    assert not s.pins and s.kv.pool.num_used_blocks == 0


def test_pins_give_way_before_anything_is_preempted():
    clock = Clock()
    s = make(policy=ContinuumPolicy(), clock=clock, num_blocks=6)
    first_turn(s, clock)
    assert s.kv.pool.num_free_blocks == 3  # the 3 pinned blocks are not evictable
    s.add(req("big", 20, max_tokens=2))  # needs 5 blocks
    out = s.schedule()
    assert names(out) == [("big", 16)] and not s.pins and not out.preempted


def test_ttl_weighs_recompute_against_the_share_of_cache_held():
    policy = ContinuumPolicy()
    policy.durations["search"] = [1.0, 1.0, 1.0, 1.0, 10.0]
    policy.speed.step_seconds = 0.16  # 400 tokens take 25 steps of 16 tokens: 4 s to recompute
    view = make(num_blocks=1000).view(0)  # block size 4: 400 tokens hold 100 of 1000 blocks
    assert policy.ttl("search", 400, view) == 10.0  # wait for the slow call too: 4 - 2.8 x 0.1 > 3.2 - 0.1
    crowded = make(num_blocks=111).view(0)  # 100 of 111 blocks: holding them costs most of the machine
    assert policy.ttl("search", 400, crowded) == 1.0
    policy.speed.step_seconds = 1e-9  # recomputing is nearly free: never pin
    assert policy.ttl("search", 400, view) == 0.0
    assert policy.ttl("rare-tool", 400, view) == policy.default_ttl  # too few samples


def test_tool_durations_are_observed_between_turns():
    clock = Clock()
    policy = ContinuumPolicy()
    s = make(policy=policy, clock=clock)
    t1 = first_turn(s, clock, tool="lookup")
    clock.t = 0.75
    s.add(turn("t2", "job", tokens=t1.all_token_ids + [1], at=0.75))
    run(s)
    assert policy.durations["lookup"] == [0.75]
    assert "job" not in policy.first_arrival  # its last turn called no tool: the program ended


def test_pinned_programs_first_then_programs_by_their_first_arrival():
    clock = Clock()
    policy = ContinuumPolicy()
    s = make(policy=policy, clock=clock, budget=16, max_num_seqs=1)
    t1 = first_turn(s, clock)  # program "job" arrived at 0 and is pinned now
    old = turn("old-1", "old", tool="x", at=-5.0)
    policy.first_arrival["old"] = -5.0  # a program older than "job"
    new = turn("new-1", "new", at=0.5)
    job2 = turn("t2", "job", tokens=t1.all_token_ids + [1], at=1.0)
    for r in (new, old, job2):
        s.add(r)
    order = [r.request_id for r in policy.order(list(s.waiting), s.view(16))]
    assert order == ["t2", "old-1", "new-1"]
    policy.first_arrival["job"] = 0.0
    s.pins.release("job")
    assert [r.request_id for r in policy.order(list(s.waiting), s.view(16))] == ["old-1", "t2", "new-1"]
    run(s)
    s.pins.release("old")
    assert s.kv.pool.num_used_blocks == 0


def test_an_aborted_turn_leaves_no_pin():
    clock = Clock()
    s = make(policy="continuum", clock=clock)
    t = turn("t", "job", tool="search")
    s.add(t)
    s.schedule()
    s.finish(t, RequestStatus.FINISHED_ABORTED)
    assert not s.pins and s.kv.pool.num_used_blocks == 0
