"""Disaggregated prefill/decode: prompts run on the prefill pool, their KV crosses the link, and
decode replicas only decode; the first token comes from the prefill side. And the direction of
DistServe's claim: without prefill chunks in decode steps, decode time per token drops."""

from __future__ import annotations

import pytest

from ember.bench.metrics import compute_metrics
from ember.bench.workloads import WorkloadSpec
from ember.config import EngineConfig
from ember.sim.simulator import Capacity, Disaggregation, Simulator
from ember.sim.workload import SimSession, SimTurn, bench_sessions

BYTES_PER_TOKEN = 46080.0  # the default model in fp32: 30 layers x 2 x 3 KV heads x 64 x 4 bytes
LINK = Disaggregation(prefill_replicas=1, link_bytes_per_s=1e9, link_latency_s=0.001)


def step_time(prefill: int, decode: int, context: int, seqs: int, attention: int = 0) -> float:
    return 0.01 + 4e-4 * prefill + 1e-3 * decode + 1e-6 * context  # prefill-heavy, as on a CPU


def simulate(sessions, replicas=1, disagg=LINK, capacity=Capacity(256, 16, 4096, BYTES_PER_TOKEN)):
    sim = Simulator(EngineConfig(max_num_seqs=8, max_num_batched_tokens=256), capacity, step_time, sessions,
                    replicas, "least-loaded", record_batches=True, disagg=disagg)
    return sim, *sim.run()


def test_the_prompt_runs_on_the_prefill_pool_and_the_kv_crosses_the_link():
    sim, (r,), duration, _ = simulate([SimSession(0.0, [SimTurn(200, 6)])])
    prefill, decode = sim.prefill_pool[0], sim.replicas[0]
    assert prefill.batches == [[("0.0/p", 200)]]
    assert all(prefill == 0 for _, prefill, _, _, _ in decode.compositions)  # decode rows only
    assert decode.batches == [[("0.0", 1)]] * 5
    transfer = 0.001 + 200 * BYTES_PER_TOKEN / 1e9
    assert r.ttft == pytest.approx(step_time(200, 0, 200, 1))
    assert r.chunk_times[1] - r.chunk_times[0] == pytest.approx(transfer + step_time(0, 1, 201, 1))
    assert r.success and r.output_tokens == 6 and len(r.chunk_times) == 6 and r.end == pytest.approx(duration)


def test_a_one_token_request_never_leaves_the_prefill_pool():
    sim, (r,), _, _ = simulate([SimSession(0.0, [SimTurn(40, 1)])])
    assert r.success and r.output_tokens == 1 and sim.replicas[0].batches == []


def test_conversations_and_a_full_decode_pool_still_complete():
    spec = WorkloadSpec(name="multi-turn", num_prompts=30, turns=3, input_len=60, output_len=40, think_time=0.2, seed=5)
    # 40 blocks per replica: transferred KV often waits for room on its decode replica
    sim, results, _, stats = simulate(bench_sessions(spec, 10.0), replicas=2, capacity=Capacity(40, 16, 4096, BYTES_PER_TOKEN))
    assert all(r.success for r in results) and len(results) == 30
    assert all(r.output_tokens == 40 and len(r.chunk_times) == 40 for r in results)
    for rep in sim.replicas + sim.prefill_pool:
        rep.scheduler.kv.pool.check_consistency()
        assert not rep.has_work


def test_without_prefill_in_its_steps_decode_gets_faster():
    sessions = bench_sessions(WorkloadSpec(name="random", num_prompts=120, input_len=400, output_len=64,
                                           range_ratio=0.5, seed=1), 6.0)
    colocated = compute_metrics(*simulate(sessions, replicas=2, disagg=None)[1:3])
    split = compute_metrics(*simulate(sessions, replicas=1)[1:3])  # 1 prefill + 1 decode: the same 2 machines
    assert colocated["completed"] == split["completed"] == 120
    assert split["tpot_ms"]["p90"] < 0.6 * colocated["tpot_ms"]["p90"]
    assert split["itl_ms"]["max"] < colocated["itl_ms"]["max"]


def test_a_pool_without_bandwidth_is_refused():
    with pytest.raises(ValueError, match="positive link bandwidth"):
        simulate([SimSession(0.0, [SimTurn(10, 2)])], disagg=Disaggregation(1, 0.0))


def test_semi_pd_splits_each_machine_and_moves_no_kv():
    """semi-PD: each machine's prefill worker (share s) hands the prompt to the decode worker on
    the same machine at once; each step takes its full-machine time over its worker's share."""
    semi = Disaggregation(prefill_replicas=2, link_bytes_per_s=1.0, prefill_share=0.25)
    sim, results, duration, _ = simulate([SimSession(0.0, [SimTurn(200, 6)]), SimSession(0.0, [SimTurn(120, 3)])],
                                         replicas=2, disagg=semi)
    a, b = results
    for r, prompt, machine in ((a, 200, 0), (b, 120, 1)):
        pre, dec = sim.prefill_pool[machine], sim.replicas[machine]
        assert pre.batches == [[(f"{machine}.0/p", prompt)]]
        assert r.ttft == pytest.approx(step_time(prompt, 0, prompt, 1) / 0.25)
        # no link: the first decode step starts as the prefill ends, on the same machine
        assert r.chunk_times[1] - r.chunk_times[0] == pytest.approx(step_time(0, 1, prompt + 1, 1) / 0.75)
        assert all(p == 0 for _, p, _, _, _ in dec.compositions) and r.success
    # with many prompts, the decode worker of a machine only gets that machine's prompts
    spec = WorkloadSpec(name="random", num_prompts=60, input_len=100, output_len=20, range_ratio=0.5, seed=3)
    sim, results, _, _ = simulate(bench_sessions(spec, 8.0), replicas=2, disagg=semi)
    assert all(r.success for r in results)
    for machine in (0, 1):
        prompts = {rid for batch in sim.prefill_pool[machine].batches for rid, _ in batch}
        decodes = {rid for batch in sim.replicas[machine].batches for rid, _ in batch}
        assert {rid + "/p" for rid in decodes} <= prompts


@pytest.mark.parametrize("share, replicas, prefill", [(0.0, 1, 1), (1.0, 1, 1), (0.5, 2, 1)])
def test_bad_semi_pd_layouts_are_refused(share, replicas, prefill):
    with pytest.raises(ValueError, match="semi-PD"):
        simulate([SimSession(0.0, [SimTurn(10, 2)])], replicas=replicas,
                 disagg=Disaggregation(prefill, 1.0, prefill_share=share))


def test_semi_pd_scaling_sets_how_much_a_share_slows_a_step():
    semi = Disaggregation(prefill_replicas=1, link_bytes_per_s=1.0, prefill_share=0.25, scaling=(0.5, 0.0))
    _, (r,), _, _ = simulate([SimSession(0.0, [SimTurn(200, 3)])], disagg=semi)
    assert r.ttft == pytest.approx(step_time(200, 0, 200, 1) * 0.25 ** -0.5)
    assert r.chunk_times[1] - r.chunk_times[0] == pytest.approx(step_time(0, 1, 201, 1))  # decode: unchanged
