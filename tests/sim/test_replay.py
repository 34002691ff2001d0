"""Scoring step models by replaying the profiled runs: the true step function replays with no
error, a biased one with more the more it is biased, and replay picks the kind that reproduces
the runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ember.bench.metrics import compute_metrics
from ember.bench.workloads import WorkloadSpec
from ember.config import EngineConfig
from ember.sim.calibrate import build_model_json
from ember.sim.replay import replay_error, replay_runs
from ember.sim.simulator import Capacity, Simulator
from ember.sim.workload import bench_sessions
from tests.sim.test_calibrate import synthetic_steps, write_profile

CONFIG = EngineConfig(max_num_seqs=8, max_num_batched_tokens=128)
CAPACITY = Capacity(256, 16, 4096)
SPEC = WorkloadSpec(name="chat-like", num_prompts=40, max_input_len=300, max_output_len=40, seed=4)


def truth(prefill: int, decode: int, context: int, seqs: int, attention: int = 0) -> float:
    """Two code paths with different costs, and a batch-size curve no straight line follows."""
    if prefill:
        return 0.05 + 4e-4 * prefill
    return 0.02 + 0.03 * np.sqrt(seqs)


def measured_report(rate: float) -> dict:
    """A `bench serve`-shaped report of the workload run with the true step times."""
    results, duration, _ = Simulator(CONFIG, CAPACITY, truth, bench_sessions(SPEC, rate)).run()
    return {"kind": "serve", "workload": dataclasses.asdict(SPEC),
            "runs": [{"request_rate": rate, "metrics": compute_metrics(results, duration)}]}


def test_the_true_step_function_replays_exactly_and_a_slow_one_by_its_bias():
    runs = replay_runs([measured_report(2.0), measured_report(float("inf"))])
    error, ratios = replay_error(truth, CONFIG, CAPACITY, runs)
    assert error == pytest.approx(0.0, abs=1e-9) and len(ratios) == 2
    a_bit, _ = replay_error(lambda *f: 1.05 * truth(*f), CONFIG, CAPACITY, runs)
    more, _ = replay_error(lambda *f: 1.2 * truth(*f), CONFIG, CAPACITY, runs)
    assert 3.0 < a_bit < more  # queueing amplifies a step bias: 20% slower steps miss TTFT by far more


def test_replay_keeps_the_kind_that_reproduces_the_runs(tmp_path):
    X, _ = synthetic_steps(n=600, seed=2)
    X[:, 3] = np.clip(X[:, 3], 1, 8)  # batches as this engine config makes them
    write_profile(tmp_path / "steps.csv", X, np.array([truth(*map(int, r)) for r in X]), gap=0.0)
    replay = (CONFIG, CAPACITY, replay_runs([measured_report(2.0)]))
    data = build_model_json([str(tmp_path / "steps.csv")], None, replay=replay)
    scores = {k: v["replay_error_pct"] for k, v in data["compared"].items()}
    assert data["kind"] == min(scores, key=scores.get) and data["selected_by"] == "replay of the profiled runs"
    assert scores[data["kind"]] < 5.0
    forced = build_model_json([str(tmp_path / "steps.csv")], None, kind="linear", replay=replay)
    assert forced["kind"] == "linear" and forced["selected_by"] == "--kind"


def test_a_report_without_a_workload_is_refused():
    with pytest.raises(ValueError, match="--replay takes `ember bench throughput` or `ember bench serve` reports"):
        replay_runs([{"kind": "latency", "runs": []}])
