"""VTC through the real scheduler, without a model: counters, the pick, the lift, weights,
victims, and the fairness bound on an overload trace that FCFS breaks."""

from __future__ import annotations

import json

import pytest

from ember.config import EngineConfig
from ember.engine.policies import POLICIES, PreemptReason
from ember.engine.policies.vtc import VTCPolicy
from tests.engine.scheduling import make, names, req, run, step


def test_counters_charge_prompts_at_admission_and_outputs_as_produced():
    vtc = VTCPolicy()
    s = make(policy=vtc, budget=64)
    s.add(req("a1", 8, max_tokens=3, user="a"))
    s.add(req("b1", 5, max_tokens=1, user="b"))
    step(s)  # both prefill and sample a token; b1 finishes
    assert vtc.counters == {"a": 8 + 2, "b": 5 + 2}
    run(s)
    assert vtc.counters == {"a": 8 + 3 * 2, "b": 5 + 2}
    assert vtc._charged_out == {} and all(not ids for ids in vtc._waiting.values())


def test_the_client_with_the_smallest_counter_goes_next():
    vtc = VTCPolicy()
    s = make(policy=vtc, budget=4, max_num_seqs=1)
    for rid, user in (("a1", "a"), ("a2", "a"), ("c1", "c"), ("b1", "b"), ("b2", "b")):
        s.add(req(rid, 4, max_tokens=1, user=user))
    vtc.counters.update(a=100.0, b=10.0, c=50.0)  # set after arrival: the lift would even them
    order = [sched[0][0] for sched in run(s)]
    # b: 10 -> 16 (4 in + 2 out) -> 22 -> 28; then c (50 -> 56), then a
    assert order == ["b1", "b2", "c1", "a1", "a2"]


def test_one_step_admits_by_counters_that_include_this_steps_admissions():
    vtc = VTCPolicy()
    s = make(policy=vtc, budget=64)
    for rid, user in (("a1", "a"), ("a2", "a"), ("b1", "b")):
        s.add(req(rid, 4, max_tokens=1, user=user))
    vtc.counters.update(a=0.0, b=3.0)
    ordered = [r.request_id for r in vtc.order(list(s.waiting), s.view(64))]
    assert ordered == ["a1", "b1", "a2"]  # after a1 a's counter is 4 > 3


def test_a_returning_client_is_lifted_to_the_smallest_backlogged_counter():
    vtc = VTCPolicy()
    s = make(policy=vtc, budget=1)
    s.add(req("a1", 4, user="a"))
    s.add(req("b1", 4, user="b"))
    assert vtc.counters["b"] == vtc.counters["a"] == 0.0
    vtc.counters.update(a=40.0, b=25.0, idle=3.0, rich=90.0)  # as if they had been served
    s.add(req("idle1", 4, user="idle"))
    assert vtc.counters["idle"] == 25.0  # lifted to min(40, 25)
    s.add(req("rich1", 4, user="rich"))
    assert vtc.counters["rich"] == 90.0  # never lowered
    s.add(req("idle2", 4, user="idle"))
    assert vtc.counters["idle"] == 25.0  # its queue was not empty: no lift
    s.add(req("new1", 4, user="new"))
    assert vtc.counters["new"] == 25.0  # a new client starts at the minimum, not at 0
    vtc2 = VTCPolicy()
    make(policy=vtc2).add(req("x", 4, user="x"))
    assert vtc2.counters["x"] == 0.0  # nobody backlogged: nothing to lift to


def test_weights_divide_the_charge(tmp_path):
    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"gold": 2, "free": 0.5}))
    vtc = POLICIES.create("vtc", EngineConfig(policy="vtc", client_weights=str(path), vtc_output_weight=4.0))
    s = make(policy=vtc, budget=64)
    for user in ("gold", "free", "plain"):
        s.add(req(user, 8, max_tokens=2, user=user))
    run(s)
    assert vtc.counters == {"gold": (8 + 2 * 4) / 2, "free": (8 + 2 * 4) / 0.5, "plain": 8 + 2 * 4}


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "expected an object"),
    ('{"a": 0}', "weight of 'a' must be a positive number"),
    ('{"a": "2"}', "weight of 'a' must be a positive number"),
    ("{nope", "is not JSON"),
])
def test_bad_client_weights_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "w.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        POLICIES.create("vtc", EngineConfig(policy="vtc", client_weights=str(path)))
    with pytest.raises(ValueError, match="client_weights '/nonexistent.json'"):
        POLICIES.create("vtc", EngineConfig(policy="vtc", client_weights="/nonexistent.json"))


def test_n_siblings_pay_their_outputs_not_the_shared_prompt():
    vtc = VTCPolicy()
    s = make(policy=vtc, budget=64)
    parent = req("p", 8, max_tokens=3, user="a")
    children = [req(f"p.{i}", tokens=parent.prompt_token_ids, max_tokens=3, user="a") for i in (1, 2)]
    s.add(parent, forks=children)
    run(s)
    assert vtc.counters["a"] == 8 + 3 * 3 * 2


def test_victim_is_the_newest_request_of_the_most_served_client():
    vtc = VTCPolicy()
    vtc.counters.update(a=5.0, b=9.0)
    a1, b1, b2 = req("a1", 1, user="a"), req("b1", 1, user="b"), req("b2", 1, user="b")
    assert vtc.victim([a1, b2, b1], PreemptReason.KV_PRESSURE) is b2
    assert vtc.victim([a1, b1], PreemptReason.PRIORITY, waiting=b2) is None


def test_preemption_under_kv_pressure_keeps_the_books_straight():
    vtc = VTCPolicy()
    s = make(policy=vtc, num_blocks=4, budget=64)
    s.add(req("a1", 7, max_tokens=6, user="a"))
    s.add(req("b1", 7, max_tokens=6, user="b"))
    schedules = run(s)
    assert s.num_preemptions > 0 and s.kv.pool.num_used_blocks == 0
    # each prompt is charged once, however often it was recomputed; each output token once
    assert vtc.counters == {"a": 7 + 6 * 2, "b": 7 + 6 * 2}
    assert schedules


def service_gaps(policy: str, steps: int = 60):
    """Overload: client `heavy` sends 3 requests a step, `light` 1; the server fits about 2.
    Returns the largest gap in service (1 per prompt token admitted, 2 per output token)
    between the two clients while both are backlogged, and whether both always were."""
    s = make(policy=POLICIES.create(policy), budget=16, max_num_seqs=4, num_blocks=4096)
    service = {"heavy": 0.0, "light": 0.0}
    seen: dict[str, int] = {}
    gap, both_backlogged = 0.0, True
    for t in range(steps):
        for k in range(3):
            s.add(req(f"h{t}.{k}", 8, max_tokens=4, user="heavy"))
        s.add(req(f"l{t}", 8, max_tokens=4, user="light"))
        out, finished = step(s)
        for r in [r for r, _ in out.scheduled] + finished:
            if r.request_id not in seen:
                seen[r.request_id] = 0
                service[r.user] += r.num_prompt_tokens
            service[r.user] += 2 * (len(r.output_token_ids) - seen[r.request_id])
            seen[r.request_id] = len(r.output_token_ids)
        waiting_users = {r.user for r in s.waiting}
        if t >= 5:
            both_backlogged &= waiting_users == {"heavy", "light"}
            gap = max(gap, abs(service["heavy"] - service["light"]))
    return gap, both_backlogged


def test_vtc_keeps_the_service_gap_within_its_bound_where_fcfs_does_not():
    # 2 x max(w_in x L_in, w_out x M), M: the most tokens the running batch holds (4 x (8 + 4))
    bound = 2 * max(1 * 8, 2 * 4 * (8 + 4))
    vtc_gap, vtc_backlogged = service_gaps("vtc")
    fcfs_gap, fcfs_backlogged = service_gaps("fcfs")
    assert vtc_backlogged and fcfs_backlogged
    assert vtc_gap <= bound
    assert vtc_gap <= bound / 8
    assert fcfs_gap > 2 * bound  # FCFS serves heavy three times as often, and the gap grows
