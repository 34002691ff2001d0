"""`ember sim calibrate | run` from the command line: files in, files out, and bad input as one
line on stderr with exit status 2."""

from __future__ import annotations

import json

import pytest

from ember.bench.report import load_report, new_report, save_report
from ember.cli import main
from tests.sim.test_calibrate import synthetic_steps, write_profile


@pytest.fixture
def model_json(tmp_path, capsys):
    X, y = synthetic_steps(n=300)
    write_profile(tmp_path / "steps.csv", X, y)
    report = new_report("throughput", "profiled", engine={"max_num_seqs": 16, "kv_cache_tokens": 4096})
    save_report(report, str(tmp_path / "bench.json"))
    code = main(["sim", "calibrate", str(tmp_path / "steps.csv"), "-o", str(tmp_path / "model.json"),
                 "--report", str(tmp_path / "bench.json"), "--max-num-batched-tokens", "256",
                 "--plot", str(tmp_path / "pred.png")])
    assert code == 0, capsys.readouterr().err
    return tmp_path / "model.json"


def test_calibrate_records_the_engine_config_and_draws_the_plot(model_json, capsys):
    data = json.loads(model_json.read_text())
    assert data["kind"] == "linear" and data["holdout_mape_pct"] < 1e-3
    engine = data["engine"]
    assert (engine["max_num_seqs"], engine["kv_cache_tokens"], engine["max_num_batched_tokens"]) == (16, 4096, 256)
    assert engine["policy"] == "fcfs"  # what the report did not say is the default
    assert (model_json.parent / "pred.png").stat().st_size > 1000


def test_run_writes_a_serve_report_that_bench_compare_reads(model_json, tmp_path, capsys, default_gguf_path):
    out = tmp_path / "sim.json"
    code = main(["sim", "run", "--model-json", str(model_json), "--num-prompts", "30", "--input-len", "64",
                 "--output-len", "16", "--sweep-rate", "5,inf", "--replicas", "2", "--router", "least-loaded",
                 "--policy", "priority", "--goodput", "ttft:200", "-o", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "events/s" in err
    report = load_report(str(out))
    assert report["kind"] == "serve" and report["simulated"] and report["engine"]["policy"] == "priority"
    assert report["engine"]["max_num_seqs"] == 16  # recorded by calibrate, not overridden
    assert [run["request_rate"] for run in report["runs"]] == [5.0, float("inf")]
    for run in report["runs"]:
        assert run["metrics"]["completed"] == 30 and len(run["requests"]) == 30
        assert run["metrics"]["goodput"]["good_requests"] <= 30
    slow, burst = (run["metrics"]["ttft_ms"]["mean"] for run in report["runs"])
    assert burst > slow  # everyone at once queues longer
    assert main(["bench", "compare", str(out)]) == 0
    assert "sim rate=5" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["run", "--model-json", "{model}", "--replicas", "0"], "--replicas must be at least 1"),
    (["run", "--model-json", "{model}", "--prefill-replicas", "1", "--link-gbps", "0"], "--link-gbps must be positive"),
    (["run", "--model-json", "{model}", "--overlap", "0.5"], "need the fused step's phase split"),
    (["run", "--model-json", "{dir}/none.json"], "cannot read"),
    (["run", "--model-json", "{dir}/steps.csv"], "is not JSON"),
    (["run", "--model-json", "{model}", "--trace", "{dir}/steps.csv"], "needs a header with arrival_s"),
    (["run", "--model-json", "{model}", "--policy", "nope"], "unknown scheduling policy 'nope'"),
    (["run", "--model-json", "{model}", "--preemption", "swap"], "only recompute"),
    (["run", "--model-json", "{model}", "--kv-press", "streaming"], "is not simulated"),
    (["run", "--model-json", "{model}", "--trace", "{dir}/steps.csv", "--request-rate", "2"], "own arrival times"),
    (["run", "--model-json", "{model}", "--goodput", "ttft"], "--goodput: expected NAME:MS"),
    (["run", "--model-json", "{model}", "--power-cap", "200"], "need --power"),
    (["run", "--model-json", "{model}", "--semi-pd", "1.5"], "--semi-pd is the prefill worker's share"),
    (["run", "--model-json", "{model}", "--semi-pd", "0.5", "--prefill-replicas", "1"], "choose one"),
    (["run", "--model-json", "{model}", "--semi-pd", "0.5", "--semi-pd-scaling", "decode=x"], "--semi-pd-scaling"),
    (["run", "--model-json", "{model}", "--layered-prefill", "0"], "--layered-prefill must be at least 1"),
    (["calibrate", "{model}", "-o", "{dir}/m2.json"], "is not a step profile"),
    (["calibrate", "{dir}/steps.csv", "-o", "{dir}/no/such/m.json"], "no directory"),
])
def test_bad_input_is_one_clear_line(model_json, capsys, argv, message, default_gguf_path):
    argv = [a.format(model=model_json, dir=model_json.parent) for a in argv]
    capsys.readouterr()
    assert main(["sim"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_a_trace_on_a_disaggregated_cluster(model_json, tmp_path, capsys, default_gguf_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens,hash_ids\n" +
                     "".join(f"{i * 0.25},{600 + 10 * i},{8 + i % 5},{i % 2} 7\n" for i in range(16)))
    out = tmp_path / "sim.json"
    code = main(["sim", "run", "--model-json", str(model_json), "--trace", str(trace), "--trace-block-tokens", "256",
                 "--replicas", "2", "--prefill-replicas", "1", "--router", "cache-aware", "--link-gbps", "10",
                 "--goodput", "ttft:5000", "-o", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    report = load_report(str(out))
    run = report["runs"][0]
    assert report["cluster"]["machines"] == 3 and report["cluster"]["disagg"]["prefill_replicas"] == 1
    assert run["request_rate"] == pytest.approx(16 / 3.75)  # the trace's own rate
    assert run["metrics"]["completed"] == 16 and run["sim"]["prefix_hit_rate"] > 0.5
    assert run["metrics"]["goodput"]["request_goodput_per_machine"] == pytest.approx(
        run["metrics"]["goodput"]["request_goodput"] / 3)
    assert run["sim"]["prefill_utilization_mean"] > 0


def test_semi_pd_and_layered_prefill_from_the_command_line(model_json, tmp_path, capsys, default_gguf_path):
    out = tmp_path / "semi.json"
    code = main(["sim", "run", "--model-json", str(model_json), "--workload", "random", "--num-prompts", "24",
                 "--input-len", "200", "--output-len", "8", "--request-rate", "4", "--replicas", "2",
                 "--semi-pd", "0.4", "--semi-pd-scaling", "prefill=1,decode=0.3", "--layered-prefill", "3",
                 "--max-num-batched-tokens", "1024", "-o", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    report = load_report(str(out))
    assert report["cluster"]["machines"] == 2 and report["cluster"]["disagg"]["prefill_share"] == 0.4
    assert report["cluster"]["disagg"]["scaling"] == [1.0, 0.3] and report["cluster"]["layer_groups"] == 3
    assert report["runs"][0]["metrics"]["completed"] == 24
