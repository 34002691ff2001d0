"""The client without a server: payloads, and requests that fail are counted, never dropped."""

import asyncio

from ember.bench.metrics import compute_metrics
from ember.bench.online import ClientConfig, build_payload, root_url, run_sessions
from ember.bench.workloads import Session, Turn, WorkloadSpec, build_workload

from .conftest import free_port


def test_root_url_accepts_v1_or_not():
    assert root_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"
    assert root_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"


def test_chat_payload_resends_history_after_the_system_prompt():
    cfg = ClientConfig("http://127.0.0.1:1", endpoint="chat", model="m", ignore_eos=True,
                       extra_body={"top_k": 5})
    turn = Turn("and now?", 3, 9, system="be brief")
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    body = build_payload(cfg, turn, history, user="alice")
    assert body["messages"] == [{"role": "system", "content": "be brief"}, *history,
                                {"role": "user", "content": "and now?"}]
    assert body["max_tokens"] == 9 and body["stream"] is True and body["ignore_eos"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["user"] == "alice" and body["top_k"] == 5 and body["model"] == "m"


def test_completions_payload_is_plain_text_in_order():
    cfg = ClientConfig("http://127.0.0.1:1", endpoint="completions", model="m")
    body = build_payload(cfg, Turn("q2", 1, 4, system="sys"), [{"role": "user", "content": "q1"},
                                                                 {"role": "assistant", "content": "a1"}], None)
    assert body["prompt"] == "sys\n\nq1\n\na1\n\nq2"
    assert "ignore_eos" not in body and "user" not in body and "messages" not in body


def test_server_down_every_request_counts_as_failed(bench_tokenizer):
    port = free_port()  # nothing listens there
    sessions = build_workload(WorkloadSpec(name="random", num_prompts=5, input_len=8, output_len=4), bench_tokenizer)
    cfg = ClientConfig(f"http://127.0.0.1:{port}", model="m", request_rate=50.0, seed=1)
    results, duration = asyncio.run(run_sessions(cfg, sessions, bench_tokenizer))
    assert len(results) == 5 and not any(r.success for r in results)
    assert all("Connect" in r.error for r in results)
    m = compute_metrics(results, duration)
    assert (m["completed"], m["failed"]) == (0, 5)
    assert sum(m["errors"].values()) == 5


def test_server_down_multi_turn_counts_every_turn(bench_tokenizer):
    port = free_port()
    sessions = [Session([Turn("a", 1, 2), Turn("b", 1, 2, think_time=0.01), Turn("c", 1, 2)]),
                Session([Turn("d", 1, 2)])]
    cfg = ClientConfig(f"http://127.0.0.1:{port}", endpoint="chat", model="m")
    results, _ = asyncio.run(run_sessions(cfg, sessions, bench_tokenizer))
    assert len(results) == 4 and not any(r.success for r in results)
    assert sorted((r.session, r.turn) for r in results) == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert sum("earlier turn" in r.error for r in results) == 2


def test_server_down_without_model_name_is_a_clear_error(bench_tokenizer):
    import pytest

    cfg = ClientConfig(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectionError, match="pass --model"):
        asyncio.run(run_sessions(cfg, [Session([Turn("a", 1, 2)])], bench_tokenizer))
