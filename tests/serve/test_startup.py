"""What `ember serve` says about its start-up: the engine's timed parts and the rest."""

from __future__ import annotations

import re

from ember.serve.server import process_age_s, startup_line


def test_process_age_and_the_ready_line():
    age = process_age_s()
    assert age is not None and 0 < age < 24 * 3600
    line = startup_line({"model": 0.25, "KV cache": 0.0})
    m = re.fullmatch(r"ready in ([\d.]+) s: model 0\.2 s, KV cache 0\.0 s, Python, imports and HTTP ([-\d.]+) s", line)
    assert m, line
    assert float(m.group(1)) >= age - 0.1
    assert abs(float(m.group(2)) - (float(m.group(1)) - 0.25)) <= 0.1


def test_the_engine_times_its_parts(ember_lm_int4):
    from ember.config import EngineConfig
    from ember.engine.llm_engine import LLMEngine

    engine = LLMEngine(EngineConfig(linear="int4", kv_cache_tokens=1024), loaded=ember_lm_int4)
    assert set(engine.startup_s) == {"KV cache", "C kernels"}  # the model came loaded
    assert all(s >= 0 for s in engine.startup_s.values())
