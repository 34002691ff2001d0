"""The event loop: deterministic, the same batches as driving the engine's Scheduler directly,
conversations and traces, failures the engine would give, and routers."""

from __future__ import annotations

import pytest

from ember.bench.workloads import WorkloadSpec
from ember.config import EngineConfig
from ember.engine.profile import batch_composition
from ember.engine.scheduling_setup import build_scheduler
from ember.request import Request, RequestMetrics
from ember.sampling_params import SamplingParams
from ember.sim.simulator import Capacity, Simulator
from ember.sim.workload import SimSession, SimTurn, bench_sessions, read_trace


def step_time(prefill: int, decode: int, context: int, seqs: int, attention: int = 0) -> float:
    return 0.004 + 1e-4 * prefill + 3e-4 * decode + 1e-6 * context


def simulate(sessions, config=None, capacity=Capacity(64, 16, 4096), replicas=1, router="round-robin", record=False):
    sim = Simulator(config or EngineConfig(max_num_seqs=4, max_num_batched_tokens=48), capacity, step_time,
                    sessions, replicas, router, record_batches=record)
    results, duration, stats = sim.run()
    return sim, results, duration, stats


def staggered(n: int = 14) -> list[SimSession]:
    """Lengths and arrivals that make chunked prefill, a full batch and (in 32 blocks) preemption."""
    return [SimSession(0.02 * (i // 3), [SimTurn(20 + 37 * (i % 5), 30 + 11 * (i % 4))]) for i in range(n)]


def test_a_fixed_seed_gives_the_same_run_and_another_seed_another():
    spec = WorkloadSpec(name="chat-like", num_prompts=60, seed=3)
    runs = [simulate(bench_sessions(spec, 20.0), replicas=2)[1] for _ in range(2)]
    assert [r.to_json() for r in runs[0]] == [r.to_json() for r in runs[1]]
    other = simulate(bench_sessions(WorkloadSpec(name="chat-like", num_prompts=60, seed=4), 20.0), replicas=2)[1]
    assert [r.to_json() for r in other] != [r.to_json() for r in runs[0]]


def test_the_same_batches_as_the_scheduler_driven_step_by_step_as_the_engine_drives_it():
    sessions = staggered()
    config = EngineConfig(max_num_seqs=4, max_num_batched_tokens=48)
    sim, results, _, stats = simulate(sessions, config, Capacity(32, 16, 4096), record=True)
    assert stats.preemptions > 0  # the run exercises preemption, not only batching

    # the engine's loop, by hand: queue what has arrived, schedule, run for the step's time, update
    now = 0.0
    s = build_scheduler(config, 32, 16, clock=lambda: now)
    pending = [(session.arrival_s, k, session.turns[0]) for k, session in enumerate(sessions)]
    batches, first_token = [], {}
    while pending or s.num_unfinished:
        if not s.num_unfinished:
            now = max(now, pending[0][0])
        while pending and pending[0][0] <= now:
            _, k, turn = pending.pop(0)
            ids = [10_000 + k] + [2] * (turn.prompt_tokens - 1)  # unique first token: no prefix hits
            s.add(Request(f"{k}.0", ids, SamplingParams(ignore_eos=True), turn.output_tokens, arrival_order=k,
                          metrics=RequestMetrics(now)))
        out = s.schedule()
        batches.append([(r.request_id, n) for r, n in out.scheduled])
        samplers = out.sample_requests
        seqs, prefill, decode, context, _ = batch_composition(out)
        now += step_time(prefill, decode, context, seqs)
        for r in samplers:
            first_token.setdefault(r.request_id, now)
        s.update(out, {r.request_id: 1 for r in samplers})
    assert sim.replicas[0].batches == batches
    assert {f"{r.session}.0": r.chunk_times[0] for r in results} == pytest.approx(first_token)
    assert all(r.success and r.output_tokens == sessions[r.session].turns[0].output_tokens for r in results)


def test_request_times_follow_the_step_model():
    # one request alone: its prompt in one step, then one token per decode step
    _, (r,), duration, _ = simulate([SimSession(0.5, [SimTurn(40, 5)])])
    prefill = step_time(40, 0, 40, 1)
    assert r.ttft == pytest.approx(prefill)
    assert r.itl == pytest.approx([step_time(0, 1, 40 + i, 1) for i in range(1, 5)])
    assert r.end == pytest.approx(duration) and r.start == 0.5


def test_a_conversation_resends_its_history_and_hits_the_prefix_cache():
    spec = WorkloadSpec(name="multi-turn", num_prompts=6, turns=3, input_len=40, output_len=20, think_time=0.5, seed=1)
    sessions = bench_sessions(spec, 4.0)
    _, results, _, stats = simulate(sessions)
    by_turn = {(r.session, r.turn): r for r in results}
    for (k, t), r in by_turn.items():
        if t:
            before = by_turn[(k, t - 1)]
            assert r.start == pytest.approx(before.end + sessions[k].turns[t].think_s)
            assert r.prompt_tokens == before.prompt_tokens + before.output_tokens + 40
    assert stats.prefix_hit_rate > 0.3


def test_what_the_engine_refuses_fails_and_the_rest_runs():
    sessions = [SimSession(0.0, [SimTurn(5000, 4)]), SimSession(0.0, [SimTurn(30, 4), SimTurn(5000, 2), SimTurn(8, 2)]),
                SimSession(0.1, [SimTurn(30, 4)])]
    _, results, _, _ = simulate(sessions, capacity=Capacity(64, 16, 1024))
    failed = {(r.session, r.turn): r.error for r in results if not r.success}
    assert "at most 1024 tokens per sequence" in failed[(0, 0)] and "at most 1024" in failed[(1, 1)]
    assert failed[(1, 2)] == "not sent: an earlier turn of its conversation failed"
    assert sum(r.success for r in results) == 2


def test_a_prompt_larger_than_an_empty_cache_fails_like_the_engine():
    # as LLMEngine.step: once nothing runs and nothing waiting fits, every waiting request is aborted
    sessions = [SimSession(0.0, [SimTurn(900, 4)]), SimSession(0.0, [SimTurn(10, 4)]), SimSession(5.0, [SimTurn(10, 4)])]
    _, results, _, _ = simulate(sessions, capacity=Capacity(8, 16, 4096))
    assert [r.success for r in results] == [False, False, True]
    assert "cannot hold a waiting request" in results[0].error


def test_round_robin_alternates_and_cache_aware_keeps_prefix_groups_together():
    sessions = bench_sessions(WorkloadSpec(name="shared-prefix", num_prompts=80, num_prefixes=4, prefix_len=128,
                                           input_len=16, output_len=8, seed=2), 40.0)
    config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=256)
    rr, _, _, rr_stats = simulate(sessions, config, Capacity(400, 16, 4096), replicas=4, record=True)
    got = [{rid for batch in rep.batches for rid, _ in batch} for rep in rr.replicas]
    assert [len(ids) for ids in got] == [20, 20, 20, 20]
    assert got[1] == {f"{k}.0" for k in range(1, 80, 4)}
    _, _, _, ca_stats = simulate(sessions, config, Capacity(400, 16, 4096), replicas=4, router="cache-aware")
    assert ca_stats.prefix_hit_rate > rr_stats.prefix_hit_rate + 0.05


def test_least_loaded_spreads_a_burst():
    sessions = [SimSession(0.0, [SimTurn(30, 10)]) for _ in range(8)]
    sim, _, _, _ = simulate(sessions, replicas=4, router="least-loaded", record=True)
    assert [len(rep.batches[0]) for rep in sim.replicas] == [2, 2, 2, 2]


def test_a_trace_with_hash_ids_shares_its_blocks(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens,hash_ids\n"
                    "10.0,300,5,7 8\n10.5,300,5,7 8\n11.0,300,5,9\n10.2,40,3,\n")
    sessions = read_trace(str(path), block_tokens=128)
    assert [s.arrival_s for s in sessions] == [0.0, pytest.approx(0.2), 0.5, 1.0]
    assert sessions[2].turns[0].prefix_ids == (7, 8) and sessions[2].turns[0].prompt_tokens == 44
    _, results, _, stats = simulate(sessions)
    assert [r.prompt_tokens for r in results] == [300, 40, 300, 300]
    assert stats.prefix_hit_rate > 0.25  # the second (7 8) request finds 256 of its 300 tokens


@pytest.mark.parametrize("content, message", [
    ("arrival,prompt_tokens\n1,2\n", "needs a header with arrival_s"),
    ("arrival_s,prompt_tokens,output_tokens\n1,x,2\n", "line 2"),
    ("arrival_s,prompt_tokens,output_tokens\n-1,2,2\n", "line 2: arrival_s must be >= 0"),
])
def test_bad_traces_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "trace.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_trace(str(path))


def test_swap_preemption_and_no_replicas_are_refused():
    with pytest.raises(ValueError, match="only recompute"):
        simulate(staggered(), EngineConfig(preemption="swap"))
    with pytest.raises(ValueError, match="--replicas must be at least 1"):
        simulate(staggered(), replicas=0)


@pytest.mark.parametrize("policy", ["fcfs", "priority", "vtc", "lpm", "past-future", "conservative", "slo",
                                    "continuum", "batchllm"])
def test_every_policy_serves_every_bench_workload(policy):
    config = EngineConfig(max_num_seqs=6, max_num_batched_tokens=96, policy=policy, slo_ttft_ms=500, slo_tpot_ms=50)
    for name in ("random", "shared-prefix", "multi-turn", "agent", "multi-tenant", "chat-like"):
        spec = WorkloadSpec(name=name, num_prompts=12, input_len=40, output_len=12, prefix_len=32, think_time=0.1,
                            max_input_len=200, max_output_len=40, seed=3)
        _, results, _, _ = simulate(bench_sessions(spec, 30.0), config, Capacity(48, 16, 4096), replicas=2)
        assert len(results) == 12 and all(r.success for r in results), (policy, name)


def test_the_same_run_in_processes_with_different_string_hashes():
    # policies and routers key dicts by user and request ids: nothing may depend on str hashing
    import os
    import subprocess
    import sys

    code = ("from tests.sim.test_simulator import *; from ember.config import EngineConfig; "
            "spec = WorkloadSpec(name='multi-tenant', num_prompts=40, seed=2); "
            "_, r, _, _ = simulate(bench_sessions(spec, 20.0), EngineConfig(policy='vtc', max_num_seqs=4, "
            "max_num_batched_tokens=64), replicas=3, router='cache-aware'); "
            "print([(x.session, x.start, x.end, len(x.chunk_times)) for x in r])")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True,
                           env=dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=root)).stdout for seed in ("1", "2")]
    assert outs[0] == outs[1] and outs[0].count("(") == 40


def test_a_replica_runs_no_more_sequences_than_its_kv_cache_caps_it_to():
    """The engine caps --max-num-seqs where a codec's scratch pool would not fit (kv/spec.py);
    a simulated replica of it holds the same number, from its Capacity."""
    config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=512)
    capped = simulate(staggered(), config, Capacity(256, 16, 4096, max_num_seqs=3), record=True)[0]
    free = simulate(staggered(), config, Capacity(256, 16, 4096), record=True)[0]
    assert max(len(b) for b in capped.replicas[0].batches) == 3
    assert max(len(b) for b in free.replicas[0].batches) > 3


def test_replica_capacity_carries_the_engines_cap():
    from ember.sim.runner import replica_capacity

    small = replica_capacity(EngineConfig(kv_cache_dtype="kivi4", kv_cache_memory="48MiB", max_num_seqs=64))
    assert 1 <= small.max_num_seqs < 64
    assert replica_capacity(EngineConfig(max_num_seqs=64)).max_num_seqs == 64
