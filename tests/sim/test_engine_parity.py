"""The simulator and the real engine (the default model, really run) make the same scheduling
decisions on the same request list: the same batches step by step, and the same step
compositions in the engine's own step profile. They share the scheduler; this checks that the
simulator drives it as LLMEngine.step does (queueing, sampling, bookkeeping)."""

from __future__ import annotations

import csv

import torch

from ember.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.sampling_params import SamplingParams
from ember.sim.simulator import Capacity, Simulator
from ember.sim.workload import SimSession, SimTurn

LENGTHS = [(37, 6), (90, 3), (15, 9), (64, 5), (120, 4), (8, 7), (50, 2), (70, 6)]  # (prompt, output)


def test_the_engine_and_the_simulator_schedule_the_same_batches(ember_lm, tmp_path):
    config = EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, kv_cache_tokens=256, threads=1,
                          max_model_len=512)
    engine = LLMEngine(config, loaded=ember_lm)
    batches = []
    schedule = engine.scheduler.schedule

    def recording_schedule():  # the real schedule, its output noted
        out = schedule()
        batches.append([(r.request_id, n) for r, n in out.scheduled])
        return out

    engine.scheduler.schedule = recording_schedule
    gen = torch.Generator().manual_seed(0)
    for k, (prompt, output) in enumerate(LENGTHS):  # random ids: no two prompts share a block
        ids = torch.randint(1000, 40000, (prompt,), generator=gen).tolist()
        engine.add_request({"prompt_token_ids": ids}, SamplingParams(max_tokens=output, ignore_eos=True, temperature=0),
                           request_id=f"{k}.0")
    with engine.profiler.enable(str(tmp_path / "steps.csv")):
        while engine.has_unfinished():
            engine.step()
    with open(tmp_path / "steps.csv") as f:
        profiled = [tuple(int(row[c]) for c in ("num_seqs", "prefill_tokens", "decode_rows", "context_len_sum",
                                                  "prefill_attention"))
                    for row in csv.DictReader(f)]

    sessions = [SimSession(0.0, [SimTurn(prompt, output)]) for prompt, output in LENGTHS]
    capacity = Capacity(engine.num_blocks, engine.kv_spec.block_size, engine.max_model_len)
    sim = Simulator(config, capacity, lambda *features: 0.01, sessions, record_batches=True)
    results, _, stats = sim.run()
    assert all(r.success for r in results)
    assert stats.preemptions == engine.scheduler.num_preemptions > 0  # 256 KV slots: it must preempt
    assert sim.replicas[0].batches == [b for b in batches if b]
    assert sim.replicas[0].compositions == profiled
