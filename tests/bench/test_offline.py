"""`ember bench throughput` and `latency` on the real engine, tiny sizes (the shared model load)."""

import csv
import json

import pytest

from ember.bench.latency import run_latency
from ember.bench.offline import run_throughput
from ember.bench.workloads import WorkloadSpec, build_workload


@pytest.fixture(scope="module")
def llm(ember_lm):
    from ember import LLM

    return LLM(loaded=ember_lm, max_num_seqs=8, kv_cache_tokens=4096)


def test_throughput_counts_every_token(llm):
    sessions = build_workload(WorkloadSpec(name="shared-prefix", num_prompts=3, num_prefixes=1, prefix_len=16,
                                           input_len=8, output_len=4), llm.tokenizer)
    run = run_throughput(llm, sessions, ignore_eos=True, temperature=0.0, seed=0, progress=False)
    m = run["metrics"]
    assert (m["completed"], m["failed"]) == (3, 0)
    assert m["total_output_tokens"] == 12
    assert m["total_input_tokens"] >= 3 * 24  # prefix + blank line + question
    assert "itl_ms" not in m and m["tpot_ms"]["count"] == 3
    for r in run["requests"]:
        assert r["output_tokens"] == 4 and r["start"] <= r["chunk_times"][0] <= r["end"]
    assert m["output_throughput"] == pytest.approx(12 / m["duration_s"])


def test_throughput_refuses_multi_turn(llm):
    sessions = build_workload(WorkloadSpec(name="multi-turn", num_prompts=2, turns=2, input_len=4), llm.tokenizer)
    with pytest.raises(ValueError, match="ember bench serve"):
        run_throughput(llm, sessions, True, 0.0, 0, progress=False)


def test_latency_figures_of_one_batch(llm):
    run = run_latency(llm, batch_size=2, input_len=8, output_len=3, iters=1, warmup=0, seed=0)
    m = run["metrics"]
    assert run["batch_size"] == 2 and run["iterations"] == 1
    assert len(run["raw"]["prefill_s"]) == len(run["raw"]["e2e_s"]) == 1
    assert m["prefill_s"] > 0 and m["e2e_s"] > 0
    assert m["prefill_tok_per_s"] == pytest.approx(2 * 8 / m["prefill_s"])
    assert m["decode_ms_per_step"] == pytest.approx((m["e2e_s"] - m["prefill_s"]) / 2 * 1000)


def test_throughput_command_writes_a_step_profile(tmp_path, capsys):
    from ember.cli import main

    profile, report = tmp_path / "steps.csv", tmp_path / "run.json"
    code = main(["bench", "throughput", "--num-prompts", "2", "--input-len", "8", "--output-len", "3",
                 "--no-enable-prefix-caching", "--kv-cache-tokens", "1024", "--threads", "1", "--no-progress",
                 "--profile", str(profile), "--output", str(report)])
    assert code == 0, capsys.readouterr().err
    with open(profile, newline="") as f:
        rows = list(csv.DictReader(f))
    metrics = json.loads(report.read_text())["runs"][0]["metrics"]
    assert rows and sum(int(r["prefill_tokens"]) for r in rows) == metrics["total_input_tokens"]
    assert sum(int(r["decode_rows"]) for r in rows) == 2 * (3 - 1)
    assert f"wrote {profile} ({len(rows)} steps)" in capsys.readouterr().err
