"""Fidelity on a short live run (slow; the strict 10% figure is a benchmark, not a test): a step
model calibrated on one batch of the default model predicts another batch's duration and mean
time to first token within a loose bound."""

from __future__ import annotations

import time

import pytest
import torch

from ember.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.sampling_params import SamplingParams
from ember.sim.calibrate import build_model_json
from ember.sim.step_model import model_from_json
from ember.sim.simulator import Capacity, Simulator
from ember.sim.workload import SimSession, SimTurn

BOUND = 0.5  # a shared 2-core machine moves step times by tens of percent between runs


def run_batch(engine: LLMEngine, lengths, seed: int) -> tuple[float, list[float]]:
    """All at once, as LLM.generate: (duration, each request's time to first token), in seconds."""
    gen = torch.Generator().manual_seed(seed)
    ids = [engine.add_request({"prompt_token_ids": torch.randint(1000, 40000, (p,), generator=gen).tolist()},
                              SamplingParams(max_tokens=o, ignore_eos=True, temperature=0)) for p, o in lengths]
    t0 = time.monotonic()
    while engine.has_unfinished():
        engine.step()
    duration = time.monotonic() - t0
    ttft = [engine.groups[i][0].metrics.first_token_time - t0 for i in ids]
    for i in ids:
        engine.release(i)
    return duration, ttft


@pytest.mark.slow
def test_a_calibrated_model_predicts_another_batch(ember_lm, tmp_path):
    config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=256, kv_cache_tokens=8192, threads=1)
    engine = LLMEngine(config, loaded=ember_lm)
    rng = torch.Generator().manual_seed(1)
    calibration = [(int(p), int(o)) for p, o in zip(torch.randint(8, 400, (24,), generator=rng),
                                                    torch.randint(4, 40, (24,), generator=rng))]
    with engine.profiler.enable(str(tmp_path / "steps.csv")):
        run_batch(engine, calibration, seed=2)
    model_json = build_model_json([str(tmp_path / "steps.csv")], None)
    step = model_from_json(model_json).predict
    gap = model_json["inter_step_s"]

    target = [(300, 10), (40, 30), (150, 20), (90, 25), (250, 8), (20, 35), (120, 15), (60, 30), (200, 12), (30, 20)]
    duration, ttft = run_batch(engine, target, seed=3)
    sim = Simulator(config, Capacity(engine.num_blocks, engine.kv_spec.block_size, engine.max_model_len),
                    lambda *f: step(*f) + gap, [SimSession(0.0, [SimTurn(p, o)]) for p, o in target])
    results, sim_duration, _ = sim.run()
    sim_ttft = [r.ttft for r in results]
    assert sim_duration == pytest.approx(duration, rel=BOUND)
    assert sum(sim_ttft) / len(sim_ttft) == pytest.approx(sum(ttft) / len(ttft), rel=BOUND)
