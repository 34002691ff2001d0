"""The scheduler without a model (vLLM's tests/v1/core style): hand-made requests, exact
schedules under a token budget with chunked prefill, max_num_seqs, preemption when blocks run
out, FCFS order, and `update` advancing, stopping, finishing and forking."""

from __future__ import annotations

import itertools

from ember.request import RequestStatus
from tests.engine.scheduling import TOKENS, make, names, req, run, step


def test_chunked_prefill_under_the_token_budget():
    s = make(budget=8)
    a, b = req("a", 10, max_tokens=3), req("b", 5, max_tokens=2)
    s.add(a)
    s.add(b)
    assert run(s) == [
        [("a", 8)],  # a's prompt does not fit the budget: a chunk of 8
        [("a", 2), ("b", 5)],  # running first (the rest of a), then b with what is left
        [("a", 1), ("b", 1)],  # both decode; b reaches max_tokens=2
        [("a", 1)],
    ]
    assert a.finish_reason == b.finish_reason == "length"
    assert a.num_computed_tokens == 12 and len(a.output_token_ids) == 3
    assert s.kv.pool.num_used_blocks == 0


def test_max_num_seqs_holds_back_admission():
    s = make(max_num_seqs=2, budget=100)
    for rid, max_tokens in (("a", 1), ("b", 3), ("c", 1)):
        s.add(req(rid, 3, max_tokens=max_tokens))
    assert run(s) == [[("a", 3), ("b", 3)], [("b", 1), ("c", 3)], [("b", 1)]]


def test_fcfs_admits_in_arrival_order_and_stops_at_the_first_that_does_not_fit():
    s = make(num_blocks=3, budget=100)
    early, late = req("early", 4), req("late", 4)
    s.add(late)  # queued first, arrived later
    s.add(early)
    assert names(s.schedule()) == [("early", 4), ("late", 4)]
    s2 = make(num_blocks=3, budget=100)
    first, blocked, small = req("first", 4), req("blocked", 12), req("small", 1)
    for r in (first, blocked, small):
        s2.add(r)
    # blocked needs 3 blocks, 2 are left; small would fit but does not jump the queue
    assert names(s2.schedule()) == [("first", 4)]
    assert s2.waiting == [blocked, small] and blocked.block_ids == []


def test_preemption_when_blocks_run_out_then_recompute_with_a_prefix_hit():
    s = make(num_blocks=4, budget=64)  # 16 token slots
    a, b = req("a", 7), req("b", 7)
    s.add(a)
    s.add(b)
    schedules, preempted = [], []
    while s.num_unfinished:
        out, _ = step(s)
        s.kv.pool.check_consistency()
        schedules.append(names(out))
        preempted.append([r.request_id for r in out.preempted])
    assert schedules == [
        [("a", 7), ("b", 7)],
        [("a", 1), ("b", 1)],
        [("a", 1)],  # a needs a third block: b, the newest, gives its two back
        [("a", 1)],  # b would need 3 blocks again; none until a finishes
        [("b", 5)],  # its first block is still cached: 9 tokens (7 prompt + 2 generated) minus 4
        [("b", 1)],
    ]
    assert preempted == [[], [], ["b"], [], [], []]
    assert b.num_preemptions == 1 and s.num_preemptions == 1
    # counted at the admission of step 5 only: the refused try of step 4 (hits given back) is not
    assert (s.kv.stats.hits, s.kv.stats.requests) == (4, 3)
    assert len(a.output_token_ids) == len(b.output_token_ids) == 4
    assert s.kv.pool.num_used_blocks == 0


def test_a_request_that_cannot_fit_preempts_itself_when_alone():
    s = make(num_blocks=2, budget=64)
    a = req("a", 8, max_tokens=4)
    s.add(a)
    step(s)  # 8 tokens fill both blocks; the next token needs a third that does not exist
    out = s.schedule()
    assert out.empty and out.preempted == [a] and a.status is RequestStatus.PREEMPTED
    assert a.block_ids == [] and s.waiting == [a] and s.running == []


def test_update_advances_and_stops():
    calls = []

    def stop_string(request, token):
        calls.append((request.request_id, token))
        return "END" if token == 9 else None

    s = make(eos_token_ids=[2])
    eos, ignoring, stop_id, stop_text = (req("eos", 3), req("ignore", 3, max_tokens=2, ignore_eos=True),
                                         req("stop_id", 3, stop_token_ids=[5]), req("text", 3))
    for r in (eos, ignoring, stop_id, stop_text):
        s.add(r)
    out = s.schedule()
    assert [n for _, n in out.scheduled] == [3, 3, 3, 3]
    finished = s.update(out, {"eos": 2, "ignore": 2, "stop_id": 5, "text": 9}, stop_string)
    assert finished == [eos, stop_id, stop_text]
    assert [r.finish_reason for r in finished] == ["stop"] * 3
    assert (eos.stop_reason, stop_id.stop_reason, stop_text.stop_reason) == (None, 5, "END")
    assert calls == [("ignore", 2), ("text", 9)]  # token-level stops come first: no text needed
    assert all(r.block_ids == [] and r.metrics.finished_time is not None for r in finished)
    assert s.running == [ignoring] and ignoring.num_computed_tokens == 3 and ignoring.output_token_ids == [2]
    out = s.schedule()
    assert names(out) == [("ignore", 1)]
    assert s.update(out, {"ignore": 2}, stop_string) == [ignoring] and ignoring.finish_reason == "length"
    assert ignoring.num_computed_tokens == 4 and s.num_unfinished == 0 and s.kv.pool.num_used_blocks == 0


def test_update_caches_full_blocks_for_the_next_request():
    s = make()
    prompt = [next(TOKENS) for _ in range(9)]
    a = req("a", tokens=prompt, max_tokens=1)
    s.add(a)
    step(s)
    assert a.is_finished and s.kv.pool.num_cached_blocks == 2
    b = req("b", tokens=prompt[:8] + [1])
    s.add(b)
    assert names(s.schedule()) == [("b", 1)] and b.num_computed_tokens == 8


def test_clock_stamps_the_metrics():
    ticks = itertools.count(100)
    s = make(clock=lambda: float(next(ticks)))
    a = req("a", 3, max_tokens=1)
    s.add(a)
    step(s)
    m = a.metrics
    assert (m.first_scheduled_time, m.first_token_time, m.last_token_time, m.finished_time) == (100, 101, 101, 102)


def test_forks_start_from_the_parents_blocks_after_its_prompt():
    s = make(budget=4)
    prompt = [next(TOKENS) for _ in range(6)]
    parent, c1, c2 = (req(rid, tokens=prompt, max_tokens=2, n=3) for rid in ("p", "p#1", "p#2"))
    s.add(parent, forks=[c1, c2])
    out, _ = step(s)
    assert names(out) == [("p", 4)] and out.forks == []
    out = s.schedule()
    assert names(out) == [("p", 2)] and out.forks == [(parent, c1), (parent, c2)]
    assert s.update(out, {"p": 11, "p#1": 12, "p#2": 13}) == []
    assert s.running == [parent, c1, c2]
    assert c1.block_ids == c2.block_ids == parent.block_ids and c1.num_computed_tokens == 6
    assert [s.kv.pool.ref_counts[b] for b in parent.block_ids] == [3, 3]
    assert (parent.output_token_ids, c1.output_token_ids, c2.output_token_ids) == ([11], [12], [13])
    assert c1.metrics.first_scheduled_time == parent.metrics.first_scheduled_time
    # Each writes its next token into the shared partial block: the first two get copies.
    out = s.schedule()
    assert names(out) == [("p", 1), ("p#1", 1), ("p#2", 1)] and len(s.kv.take_pending_copies()) == 2
    s.update(out, {r.request_id: 7 for r in out.sample_requests})
    assert all(r.is_finished for r in (parent, c1, c2)) and s.kv.pool.num_used_blocks == 0


def test_an_aborted_child_is_not_forked_and_an_aborted_parent_takes_its_forks_along():
    s = make()
    prompt = [next(TOKENS) for _ in range(5)]
    parent, c1, c2 = (req(rid, tokens=prompt, n=3) for rid in ("p", "p#1", "p#2"))
    s.add(parent, forks=[c1, c2])
    s.finish(c1, RequestStatus.FINISHED_ABORTED)
    out, _ = step(s)
    assert out.forks == [(parent, c2)] and s.running == [parent, c2] and c1.block_ids == []
    s2 = make()
    p2, d1 = req("q", tokens=prompt, n=2), req("q#1", tokens=prompt, n=2)
    s2.add(p2, forks=[d1])
    s2.finish(p2, RequestStatus.FINISHED_ABORTED)
    s2.add(req("other", 3))
    out, _ = step(s2)
    assert out.forks == [] and d1.status is RequestStatus.WAITING  # never brought in


def test_finish_gives_blocks_back_from_any_state():
    s = make(max_num_seqs=1)
    running, waiting = req("r", 6), req("w", 6)
    s.add(running)
    s.add(waiting)
    s.schedule()
    assert s.kv.pool.num_used_blocks == 2
    s.finish(running, RequestStatus.FINISHED_ABORTED)
    s.finish(waiting, RequestStatus.FINISHED_ABORTED)
    s.finish(waiting, RequestStatus.FINISHED_STOPPED)  # twice: no effect
    assert waiting.finish_reason == "abort" and s.num_unfinished == 0 and s.kv.pool.num_used_blocks == 0
