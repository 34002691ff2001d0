"""LPM and the Past-Future / conservative admission through the real scheduler, without a
model: exact orders on a warm prefix cache, the FCFS fallback, the peak formula, and
admission decisions on a fixed history."""

from __future__ import annotations

from ember.engine.policies import POLICIES, Admission
from ember.engine.policies.lpm import LPMPolicy
from ember.engine.policies.past_future import PastFuturePolicy, peak_tokens
from ember.request import RequestStatus
from tests.engine.scheduling import BS, TOKENS, make, names, req, run, step


def warm(policy):
    """A scheduler whose prefix cache holds `shared` (3 blocks) from a finished request."""
    s = make(policy=policy, budget=64, max_num_seqs=1)
    shared = [next(TOKENS) for _ in range(3 * BS)]
    s.add(req("warm", tokens=shared + [1], max_tokens=1))
    run(s)
    return s, shared


def test_lpm_runs_the_longest_cached_prefix_first():
    s, shared = warm("lpm")
    s.add(req("cold", 8, max_tokens=1))
    s.add(req("half", tokens=shared[:2 * BS] + [2, 3], max_tokens=1))
    s.add(req("full", tokens=shared + [4, 5], max_tokens=1))
    assert [sched[0][0] for sched in run(s)] == ["full", "half", "cold"]
    s, shared = warm("fcfs")
    for rid, tokens in (("cold", [next(TOKENS) for _ in range(8)]), ("full", shared + [4, 5])):
        s.add(req(rid, tokens=tokens, max_tokens=1))
    assert [sched[0][0] for sched in run(s)] == ["cold", "full"]


def test_lpm_falls_back_to_arrival_order_above_its_waiting_limit():
    s, shared = warm(LPMPolicy(max_waiting=2))
    s.add(req("cold", 8, max_tokens=1))
    s.add(req("full", tokens=shared + [4, 5], max_tokens=1))
    s.add(req("cold2", 8, max_tokens=1))
    assert [sched[0][0] for sched in run(s)] == ["cold", "full", "cold2"]


def test_lpm_peeks_without_touching_the_cache_stats():
    s, shared = warm("lpm")
    queries = s.kv.stats.queries
    s.add(req("full", tokens=shared + [4, 5], max_tokens=1))
    s.add(req("cold", 8, max_tokens=1))
    out = s.schedule()
    assert names(out) == [("full", 2)]  # 12 of 14 tokens were cached
    assert s.kv.stats.queries == queries + 14  # the admission's match only, not the peeks


def test_peak_formula():
    # sorted by future: (10, 5), (5, 3), (20, 1): peaks 15, 15 + 2*3 = 21, 35 + 3*1 = 38
    assert peak_tokens([(10, 5), (20, 1), (5, 3)]) == 38
    assert peak_tokens([(100, 0)]) == 100 and peak_tokens([]) == 0


def running_one(policy, history=None, max_tokens=20):
    """40 tokens of cache; one request of 8 prompt tokens running; a second like it waiting."""
    if history is not None:
        policy.history.extend(history)
    s = make(policy=policy, num_blocks=10, budget=64)
    s.add(req("r1", 8, max_tokens=max_tokens))
    step(s)
    s.add(req("r2", 8, max_tokens=max_tokens))
    return s


def test_past_future_admits_by_the_predicted_peak_on_a_fixed_history():
    # futures of 20: peak 9 + 8 + 2 x 20 > 40 tokens: r2 waits
    s = running_one(PastFuturePolicy(), history=[20] * 10)
    assert names(s.schedule()) == [("r1", 1)]
    # futures of 4 (r1 has generated 1: 4 - 1 = 3 to come): peak (9+3) + (8+4) fits
    s = running_one(PastFuturePolicy(), history=[4] * 10)
    assert names(s.schedule()) == [("r1", 1), ("r2", 8)]


def test_past_future_conditions_on_what_a_request_has_generated():
    policy = PastFuturePolicy()
    policy.history.extend([4, 4, 4, 30])
    r = req("r", 8, max_tokens=100)
    r.output_token_ids = [7] * 10
    assert policy.future(r) == 20  # only 30 is longer than 10
    r.output_token_ids = [7] * 40
    assert policy.future(r) == 60  # nothing longer: the whole remaining budget
    r.output_token_ids = []
    assert policy.future(r) in range(4, 31)  # sampled
    assert PastFuturePolicy().future(r) == 100  # no history: the budget


def test_past_future_learns_only_from_requests_that_finished():
    policy = PastFuturePolicy(history=3)
    s = make(policy=policy, budget=64)
    for rid, n in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        s.add(req(rid, 4, max_tokens=n))
    s.add(aborted := req("x", 4, max_tokens=9))
    s.finish(aborted, RequestStatus.FINISHED_ABORTED)
    run(s)
    assert list(policy.history) == [2, 3, 4]  # the last 3; the abort not among them


def test_conservative_reserves_max_tokens_and_fcfs_admits_what_fits_now():
    assert names(running_one(POLICIES.create("conservative")).schedule()) == [("r1", 1)]
    assert names(running_one(POLICIES.create("conservative"), max_tokens=8).schedule()) == [("r1", 1), ("r2", 8)]
    assert names(running_one(POLICIES.create("fcfs")).schedule()) == [("r1", 1), ("r2", 8)]


def test_an_oversized_request_still_runs_alone():
    policy = POLICIES.create("conservative")
    s = make(policy=policy, num_blocks=4, budget=64)
    s.add(req("big", 8, max_tokens=100))
    assert names(s.schedule()) == [("big", 8)]
    assert policy.admit(req("next", 4), s.view(64)) is Admission.STOP


def test_past_future_preempts_less_than_fcfs_under_memory_pressure():
    def preemptions(policy):
        s = make(policy=policy, num_blocks=24, budget=64, max_num_seqs=16)
        for i in range(24):
            s.add(req(f"r{i}", 8, max_tokens=24))
        run(s, max_steps=1000)
        assert s.kv.pool.num_used_blocks == 0
        return s.num_preemptions

    past_future = PastFuturePolicy()
    past_future.history.extend([24] * 20)
    assert preemptions(past_future) == 0 < preemptions("fcfs")


def shared_prefix_batch(num_groups=3, per_group=4, prefix_blocks=3, question=2, max_tokens=2):
    prefixes = [[next(TOKENS) for _ in range(prefix_blocks * BS)] for _ in range(num_groups)]
    return [req(f"g{g}.{i}", tokens=prefixes[g] + [next(TOKENS) for _ in range(question)], max_tokens=max_tokens)
            for i in range(per_group) for g in range(num_groups)]  # interleaved: g0, g1, g2, g0, ...


def test_batchllm_groups_shared_prefixes_and_puts_decode_heavy_groups_first():
    batch = shared_prefix_batch()
    batch[1].max_tokens = batch[4].max_tokens = 50  # group 1 decodes the most
    order = [r.request_id for r in POLICIES.create("batchllm").order(batch, make().view(64))]
    groups = [rid.split(".")[0] for rid in order]
    assert groups == ["g1"] * 4 + ["g0"] * 4 + ["g2"] * 4


def test_batchllm_reuses_more_prefix_than_fcfs_when_the_cache_holds_one_prefix():
    def hits(policy):
        s = make(policy=policy, num_blocks=8, budget=64, max_num_seqs=2)  # one prefix (3 blocks) + room
        for r in shared_prefix_batch():
            s.add(r)
        run(s, max_steps=1000)
        assert s.kv.pool.num_used_blocks == 0
        return s.kv.stats.hits

    assert hits("batchllm") >= 2 * hits("fcfs")
