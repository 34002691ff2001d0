"""Time a request spends outside the engine (HTTP, template, tokenizing): the simulator adds it
to every latency without moving the engine's steps, and calibration reads it from the served
runs it replays."""

from __future__ import annotations

import math

import pytest

from ember.config import EngineConfig
from ember.sim.calibrate import request_latency
from ember.sim.simulator import Capacity, Simulator
from ember.sim.workload import SimSession, SimTurn


def step_time(prefill: int, decode: int, context: int, seqs: int, attention: int = 0) -> float:
    return 0.01 + 1e-4 * prefill + 2e-3 * decode


def run(latency: float, sessions):
    sim = Simulator(EngineConfig(), Capacity(64, 16, 4096), step_time, sessions, request_latency_s=latency)
    return sim.run()


def test_latency_adds_to_ttft_and_e2e_of_an_idle_engine():
    (base,), _, _ = run(0.0, [SimSession(1.0, [SimTurn(100, 5)])])
    (late,), _, _ = run(0.012, [SimSession(1.0, [SimTurn(100, 5)])])
    assert late.start == base.start == 1.0
    assert late.ttft == pytest.approx(base.ttft + 0.012)
    assert late.end - late.start == pytest.approx(base.end - base.start + 0.012)
    assert late.chunk_times[-1] - late.chunk_times[0] == pytest.approx(base.chunk_times[-1] - base.chunk_times[0])


def test_every_turn_of_a_conversation_pays_it():
    turns = [SimTurn(64, 4), SimTurn(16, 4, think_s=0.5)]
    base, _, _ = run(0.0, [SimSession(0.0, turns)])
    late, _, _ = run(0.02, [SimSession(0.0, turns)])
    for b, d in zip(base, late):
        assert d.ttft == pytest.approx(b.ttft + 0.02)
    # the second turn is sent think_s after the first one's end, as without the latency
    assert late[1].start - late[0].end == pytest.approx(base[1].start - base[0].end)


def test_a_negative_latency_is_refused():
    with pytest.raises(ValueError, match="request_latency_s"):
        run(-0.001, [SimSession(0.0, [SimTurn(8, 2)])])


def test_calibration_reads_it_from_the_served_runs_only():
    runs = [(None, math.inf, {"ttft_ms": {"mean": 900.0}}),  # offline: no server in front
            (None, 0.6, {"ttft_ms": {"mean": 80.0}}), (None, 1.0, {"ttft_ms": {"mean": 100.0}})]
    replayed = [{"ttft_ms": 0.5}, {"ttft_ms": 0.85}, {"ttft_ms": 0.9}]
    assert request_latency(replayed, runs) == pytest.approx((0.012 + 0.010) / 2)
    assert request_latency([{"ttft_ms": 1.2}], [(None, 1.0, {"ttft_ms": {"mean": 50.0}})]) == 0.0
    assert request_latency(replayed[:1], runs[:1]) == 0.0
