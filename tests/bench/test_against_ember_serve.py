"""`ember bench` against a real `ember serve` on loopback (started once for this module)."""

import asyncio
import json

from ember.bench.corpus import PromptMaker
from ember.bench.metrics import compute_metrics
from ember.bench.online import ClientConfig, run_sessions
from ember.bench.workloads import Session, Turn, WorkloadSpec, build_workload
from ember.cli import main

from .test_report import assert_png


def test_short_run_writes_json_that_compare_reads_and_plots(ember_server, tmp_path, capsys):
    out = tmp_path / "ember.json"
    code = main(["bench", "serve", "--base-url", ember_server, "--num-prompts", "8", "--input-len", "32",
                 "--output-len", "8", "--ignore-eos", "--request-rate", "20", "--seed", "5", "--goodput", "e2el:600000",
                 "--output", str(out), "--label", "ember", "--no-progress"])
    assert code == 0, capsys.readouterr().err[-3000:]
    capsys.readouterr()
    report = json.loads(out.read_text())
    run = report["runs"][0]
    m = run["metrics"]
    assert (m["completed"], m["failed"]) == (8, 0), m["errors"]
    assert m["total_output_tokens"] == 64 and m["total_input_tokens"] == 8 * 32
    assert m["goodput"]["good_requests"] == 8
    for r in run["requests"]:
        assert r["success"] and r["output_tokens"] == 8
        assert r["start"] <= r["chunk_times"][0] <= r["chunk_times"][-1] <= r["end"]
    assert m["ttft_ms"]["count"] == 8 and m["ttft_ms"]["max"] > 0 and m["itl_ms"]["count"] > 0

    plots = tmp_path / "plots"
    code = main(["bench", "compare", str(out), str(out), "--plot", str(plots)])
    assert code == 0
    assert "ember rate=20" in capsys.readouterr().out
    pngs = sorted(plots.glob("*.png"))
    assert [p.name for p in pngs] == ["cdf_e2el.png", "cdf_itl.png", "cdf_ttft.png"]
    for p in pngs:
        assert_png(p)


def test_chat_multi_turn_resends_the_history(ember_server, bench_tokenizer):
    sessions = build_workload(WorkloadSpec(name="multi-turn", num_prompts=4, turns=2, think_time=0.05,
                                           input_len=12, output_len=6), bench_tokenizer)
    cfg = ClientConfig(ember_server, endpoint="chat", ignore_eos=True, max_concurrency=2, seed=2)
    results, duration = asyncio.run(run_sessions(cfg, sessions, bench_tokenizer))
    assert len(results) == 4 and all(r.success for r in results), [r.error for r in results]
    by_turn = {(r.session, r.turn): r for r in results}
    for s in range(2):
        first, second = by_turn[(s, 0)], by_turn[(s, 1)]
        assert first.output_tokens == second.output_tokens == 6
        # the second prompt holds the first message and the reply: longer than the first prompt + 6
        assert second.prompt_tokens > first.prompt_tokens + 6
        assert second.start >= first.end  # a turn waits for the previous reply
    assert cfg.model  # asked from /v1/models


def test_http_400s_are_counted_as_failed(ember_server, bench_tokenizer):
    too_long, _ = PromptMaker(bench_tokenizer, seed=9).text(12000)  # beyond the model's context: a 400
    sessions = [Session([Turn("Say hello.", 3, 4)]), Session([Turn(too_long, 12000, 4)]),
                Session([Turn("Count to three.", 4, 4)]), Session([Turn(too_long, 12000, 4)])]
    cfg = ClientConfig(ember_server, endpoint="completions", ignore_eos=True)
    results, duration = asyncio.run(run_sessions(cfg, sessions, bench_tokenizer))
    m = compute_metrics(results, duration)
    assert (m["completed"], m["failed"]) == (2, 2)
    failed = [r for r in results if not r.success]
    assert [r.session for r in failed] == [1, 3]
    assert all(r.error.startswith("HTTP 400") for r in failed), [r.error for r in failed]
    assert m["total_output_tokens"] == 8  # only the two that completed


def test_multi_tenant_run_reports_each_user(ember_server, bench_tokenizer):
    from ember.bench.serve_bench import run_serve_benchmark
    from ember.bench.workloads import parse_tenants

    spec = WorkloadSpec(name="multi-tenant", num_prompts=6, tenants=parse_tenants("alice:1:8:3,bob:1:24:5"), seed=1)
    sessions = build_workload(spec, bench_tokenizer)
    cfg = ClientConfig(ember_server, ignore_eos=True)
    report = run_serve_benchmark(cfg, spec, sessions, bench_tokenizer, [50.0], [2], {"ttft": 600000.0},
                                 "ember", progress=False)
    m = report["runs"][0]["metrics"]
    users = {s.user for s in sessions}
    assert set(m["per_user"]) == users and m["failed"] == 0
    for u in users:
        n = sum(s.user == u for s in sessions)
        want = 3 if u == "alice" else 5
        assert m["per_user"][u]["completed"] == n and m["per_user"][u]["total_output_tokens"] == n * want
    assert report["runs"][0]["max_concurrency"] == 2 and report["model"]


def test_agent_run_reports_job_completion_times(ember_server, bench_tokenizer):
    from ember.bench.serve_bench import run_serve_benchmark

    spec = WorkloadSpec(name="agent", num_prompts=4, turns=2, think_time=0.05, input_len=8, output_len=3, seed=3)
    sessions = build_workload(spec, bench_tokenizer)
    cfg = ClientConfig(ember_server, endpoint="chat", ignore_eos=True)
    report = run_serve_benchmark(cfg, spec, sessions, bench_tokenizer, [50.0], [None], {}, "ember", progress=False)
    runs = report["runs"][0]
    jobs = runs["metrics"]["jobs"]
    assert (jobs["completed"], jobs["failed"]) == (2, 0)
    for k in range(2):  # a job spans its turns and the tool pause between them
        turns = sorted((r for r in runs["requests"] if r["session"] == k), key=lambda r: r["turn"])
        assert turns[1]["start"] >= turns[0]["end"] + sessions[k].turns[1].think_time - 1e-3
    assert jobs["jct_s"]["max"] >= max(s.turns[1].think_time for s in sessions)
