"""Each scheduling policy behind a live server, two clients at once through the real `openai`
client: every request completes with the output it has under FCFS (a policy changes the order,
not the tokens), the policy saw what the API sent, and no KV block is left behind."""

from __future__ import annotations

import concurrent.futures

import pytest

from tests.serve.conftest import assert_no_leak
from tests.serve.test_errors import CHAT, COMPLETIONS, USER, assert_error

PROMPTS = {"alice": ["One, two, three,", "The capital of France is", "Water boils at", "Red, green,"],
           "bob": ["Monday, Tuesday,", "A, B, C,"]}


def send_all(server, extra: dict | None = None):
    """Both clients' requests at once (max_num_seqs=2 makes them queue); (user, prompt) -> completion."""
    client = server.client()

    def one(user, prompt):
        return client.completions.create(model=server.model, prompt=prompt, max_tokens=4, temperature=0, user=user,
                                         extra_body=extra or {})

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = {(u, p): pool.submit(one, u, p) for u, prompts in PROMPTS.items() for p in prompts}
        return {key: f.result() for key, f in futures.items()}


@pytest.fixture(scope="module")
def fcfs_texts(make_server):
    with make_server(max_num_seqs=2) as server:
        return {key: c.choices[0].text for key, c in send_all(server).items()}


@pytest.mark.parametrize("policy, extra", [
    ("vtc", {}),
    ("priority", {"priority": 1}),
    ("lpm", {}),
    ("batchllm", {}),
    ("continuum", {"program_id": "p"}),
    ("past-future", {}),
    ("conservative", {}),
    ("slo", {"slo_ttft_ms": 60000, "slo_tpot_ms": 5000}),
])
def test_policy_serves_two_clients(make_server, fcfs_texts, policy, extra):
    with make_server(policy=policy, max_num_seqs=2) as server:
        done = send_all(server, extra)
        assert {key: c.choices[0].text for key, c in done.items()} == fcfs_texts
        p = server.engine.scheduler.policy
        assert p.name == policy
        if policy == "vtc":  # each client was charged exactly what the API reported serving it
            for user in PROMPTS:
                usage = [c.usage for (u, _), c in done.items() if u == user]
                service = sum(x.prompt_tokens + 2 * x.completion_tokens for x in usage)
                assert p.counters[user] - p.lifted[user] == service
        if policy in ("past-future",):
            assert sorted(p.history) == sorted(c.usage.completion_tokens for c in done.values())
        if policy == "slo":
            assert p.speed.step_seconds > 0
        assert_no_leak(server)


def test_slo_targets_reach_the_requests(make_server):
    with make_server(policy="slo") as server:
        seen = []
        policy = server.engine.scheduler.policy
        policy.on_arrival = lambda r: seen.append((r.slo_ttft_ms, r.slo_tpot_ms))
        client = server.client()
        client.completions.create(model=server.model, prompt="Hi", max_tokens=1, extra_body={"slo_ttft_ms": 250})
        client.chat.completions.create(model=server.model, messages=USER, max_tokens=1,
                                       extra_body={"slo_ttft_ms": 900, "slo_tpot_ms": 40.5})
        assert seen == [(250, 0.0), (900, 40.5)]
        assert_no_leak(server)


@pytest.mark.parametrize("field, value", [("slo_ttft_ms", -1), ("slo_tpot_ms", 0), ("slo_ttft_ms", "fast")])
@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_a_bad_slo_target_is_400(server, path, field, value):
    body = {"prompt": "x"} if path == COMPLETIONS else {"messages": USER}
    assert_error(server.post(path, json={**body, field: value, "max_tokens": 1}), 400, param=field)


def test_continuum_pins_a_tool_call_turn_for_the_programs_next_turn(make_server):
    with make_server(policy="continuum", continuum_ttl=60.0) as server:
        client, scheduler, kv = server.client(), server.engine.scheduler, server.engine.kv
        history = [{"role": "user", "content": "Find the population of France, then tell me."}]
        first = client.chat.completions.create(model=server.model, messages=history, max_tokens=8, temperature=0,
                                               extra_body={"program_id": "job-1", "tool_call": "search"})
        assert list(scheduler.pins) == ["job-1"] and scheduler.pins.num_blocks > 0
        pinned = scheduler.pins.num_blocks
        hits = kv.stats.hits
        history += [{"role": "assistant", "content": first.choices[0].message.content},
                    {"role": "user", "content": "search result: 68 million."}]
        client.chat.completions.create(model=server.model, messages=history, max_tokens=4, temperature=0,
                                       extra_body={"program_id": "job-1"})
        assert kv.stats.hits - hits >= pinned * kv.block_size  # every pinned block was found again
        assert not scheduler.pins  # the last turn called no tool: nothing stays pinned
        assert_no_leak(server)


@pytest.mark.parametrize("body", [{"program_id": 5}, {"program_id": ""}, {"tool_call": ["search"]}])
def test_a_bad_program_field_is_400(server, body):
    field = next(iter(body))
    assert_error(server.post(COMPLETIONS, json={"prompt": "x", "max_tokens": 1, **body}), 400, param=field)
