"""Layered prefill in the simulator: a prompt's step runs as G sub-steps (the prompt through one
layer group each), decodes get a token every sub-step, the prompt samples at the last."""

from __future__ import annotations

import pytest

from ember.bench.metrics import compute_metrics
from ember.bench.workloads import WorkloadSpec
from ember.config import EngineConfig
from ember.sim.simulator import Capacity, Simulator
from ember.sim.workload import SimSession, SimTurn, bench_sessions


def step_time(prefill: int, decode: int, context: int, seqs: int, attention: int = 0) -> float:
    return 0.01 + 4e-4 * prefill + 1e-3 * decode + 1e-6 * context


def simulate(sessions, groups, budget=2048):
    sim = Simulator(EngineConfig(max_num_seqs=8, max_num_batched_tokens=budget), Capacity(256, 16, 4096), step_time,
                    sessions, 1, record_batches=True, layer_groups=groups)
    return sim, *sim.run()


def test_a_prompt_spreads_over_g_sub_steps_while_a_decode_goes_on():
    sessions = [SimSession(0.0, [SimTurn(40, 12)]), SimSession(0.05, [SimTurn(400, 3)])]
    sim, (a, b), _, _ = simulate(sessions, groups=4)
    replica = sim.replicas[0]
    # a's prompt alone runs as 4 sub-steps (no decode yet), a token only at the last
    assert replica.batches[:4] == [[], [], [], [("0.0", 40)]]
    # b arrives while a decodes: 4 sub-steps, a gets a token in each, b's prompt completes in the 4th
    k = next(i for i, batch in enumerate(replica.batches) if ("1.0", 400) in batch)
    assert replica.batches[k - 3:k + 1] == [[("0.0", 1)]] * 3 + [[("0.0", 1), ("1.0", 400)]]
    share = (step_time(400, 0, 400, 1) - step_time(0, 0, 0, 0)) / 4
    # a gets a token at every step from batch 3 on: sub-step i ends at a.chunk_times[i - 3]
    sub = [a.chunk_times[i - 3] - a.chunk_times[i - 4] for i in range(k - 3, k + 1)]
    assert sub == pytest.approx([step_time(0, 1, 40 + i, 1) + share for i in range(k - 3, k + 1)], rel=1e-3)
    assert b.chunk_times[0] == a.chunk_times[k - 3]  # b's first token with the group's last sub-step
    assert a.success and b.success and a.output_tokens == 12 and b.output_tokens == 3
    replica.scheduler.kv.pool.check_consistency()


def test_layered_against_chunked_prefill_the_frontier():
    """Layered prefill keeps the gaps between decode tokens short (no step carries a whole
    prompt) at a cost in time to first token against one whole-prompt step."""
    spec = WorkloadSpec(name="random", num_prompts=80, input_len=600, output_len=40, range_ratio=0.5, seed=2)
    sessions = bench_sessions(spec, 2.0)
    whole = compute_metrics(*simulate(sessions, groups=1)[1:3])
    layered = compute_metrics(*simulate(sessions, groups=6)[1:3])
    assert whole["completed"] == layered["completed"] == 80
    assert layered["itl_ms"]["p99"] < 0.5 * whole["itl_ms"]["p99"]
    assert layered["ttft_ms"]["mean"] > whole["ttft_ms"]["mean"]


def test_one_group_is_the_plain_step():
    sessions = bench_sessions(WorkloadSpec(name="random", num_prompts=20, input_len=100, output_len=10, seed=4), 5.0)
    plain = Simulator(EngineConfig(max_num_seqs=8, max_num_batched_tokens=2048), Capacity(256, 16, 4096), step_time,
                      sessions, 1, record_batches=True)
    plain.run()
    sim, *_ = simulate(sessions, groups=1)
    assert sim.replicas[0].batches == plain.replicas[0].batches
    with pytest.raises(ValueError, match="layer group"):
        simulate(sessions, groups=0)
