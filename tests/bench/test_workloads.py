"""Workloads: seeded, real English cut to the asked token counts, the shapes each kind promises."""

import math

import numpy as np
import pytest

from ember.bench.workloads import (CHAT_INPUT, CHAT_OUTPUT, WorkloadSpec, _lognormal_len, build_workload,
                                   parse_tenant_windows, parse_tenants, poisson_arrivals, session_priorities)


def build(tok, **kw):
    return build_workload(WorkloadSpec(**kw), tok)


def test_same_seed_same_requests_other_seed_others(bench_tokenizer):
    a = build(bench_tokenizer, name="random", num_prompts=6, range_ratio=0.5, seed=3)
    b = build(bench_tokenizer, name="random", num_prompts=6, range_ratio=0.5, seed=3)
    c = build(bench_tokenizer, name="random", num_prompts=6, range_ratio=0.5, seed=4)
    assert a == b
    assert [s.turns[0].text for s in a] != [s.turns[0].text for s in c]


def test_random_prompts_are_english_of_the_asked_length(bench_tokenizer):
    sessions = build(bench_tokenizer, name="random", num_prompts=10, input_len=48, output_len=7)
    for s in sessions:
        t = s.turns[0]
        assert t.input_len == 48 == len(bench_tokenizer.encode(t.text, add_bos=False))
        assert t.output_len == 7
        assert sum(ch.isalpha() for ch in t.text) > len(t.text) / 2  # words, not token soup


def test_range_ratio_bounds_the_lengths(bench_tokenizer):
    sessions = build(bench_tokenizer, name="random", num_prompts=30, input_len=40, output_len=20, range_ratio=0.5)
    ins = [s.turns[0].input_len for s in sessions]
    outs = [s.turns[0].output_len for s in sessions]
    assert min(ins) >= 20 and max(ins) <= 60 and len(set(ins)) > 5
    assert min(outs) >= 10 and max(outs) <= 30


def test_chat_like_lengths_are_heavy_tailed_lognormals():
    rng = np.random.default_rng(0)
    ins = np.array([_lognormal_len(rng, CHAT_INPUT, 4, 10**6) for _ in range(20000)])
    outs = np.array([_lognormal_len(rng, CHAT_OUTPUT, 1, 10**6) for _ in range(20000)])
    assert abs(np.median(ins) - 42) < 3 and abs(ins.mean() - 69.5) < 4
    assert abs(np.median(outs) - 156) < 8 and abs(outs.mean() - 214.5) < 8
    assert np.percentile(ins, 99) > 5 * np.median(ins)  # the right tail a chat trace has


def test_chat_like_respects_its_caps(bench_tokenizer):
    sessions = build(bench_tokenizer, name="chat-like", num_prompts=40, max_input_len=64, max_output_len=50)
    assert all(4 <= s.turns[0].input_len <= 64 and 1 <= s.turns[0].output_len <= 50 for s in sessions)
    assert max(s.turns[0].output_len for s in sessions) == 50  # median 156 > cap: many hit it


def test_shared_prefix_groups_share_their_system_prompt(bench_tokenizer):
    sessions = build(bench_tokenizer, name="shared-prefix", num_prompts=24, num_prefixes=3, prefix_len=64, input_len=16)
    by_group = {}
    for s in sessions:
        by_group.setdefault(s.group, set()).add(s.turns[0].system)
        assert s.turns[0].system_len == 64
    assert len(by_group) == 3 and all(len(v) == 1 for v in by_group.values())
    assert len({next(iter(v)) for v in by_group.values()}) == 3
    assert len({s.turns[0].text for s in sessions}) == 24


def test_multi_turn_conversations(bench_tokenizer):
    sessions = build(bench_tokenizer, name="multi-turn", num_prompts=10, turns=4, think_time=2.0, input_len=16)
    assert [len(s.turns) for s in sessions] == [4, 4, 2]  # 10 turns, ceil(10/4) conversations
    assert all(s.turns[0].think_time == 0.0 for s in sessions)
    assert all(t.think_time > 0 for s in sessions for t in s.turns[1:])


def test_agent_programs_call_tools_between_turns(bench_tokenizer):
    from ember.bench.online import ClientConfig, build_payload
    from ember.bench.workloads import TOOLS

    sessions = build(bench_tokenizer, name="agent", num_prompts=300, turns=3, think_time=1.0, input_len=8)
    assert len(sessions) == 100 and all(len(s.turns) == 3 for s in sessions)
    programs = {s.turns[0].extra["program_id"] for s in sessions}
    assert len(programs) == 100
    for s in sessions:
        assert {t.extra["program_id"] for t in s.turns} == {s.turns[0].extra["program_id"]}
        assert s.turns[0].think_time == 0.0 and "tool_call" not in s.turns[-1].extra
    pauses = {name: [] for name, _ in TOOLS}
    for s in sessions:
        for before, after in zip(s.turns, s.turns[1:]):
            pauses[before.extra["tool_call"]].append(after.think_time)
    for name, median in TOOLS:  # 200 pauses over 3 tools: each median within 30% of its own
        assert abs(np.median(pauses[name]) / median - 1) < 0.3, (name, np.median(pauses[name]))
    body = build_payload(ClientConfig("http://x", endpoint="chat", model="m"), sessions[0].turns[0], [], None)
    assert body["program_id"] == sessions[0].turns[0].extra["program_id"] and body["tool_call"] in dict(TOOLS)


def test_multi_tenant_users_rates_and_lengths(bench_tokenizer):
    tenants = parse_tenants("big:3:24:6,small:1:80:12")
    sessions = build(bench_tokenizer, name="multi-tenant", num_prompts=200, tenants=tenants)
    big = [s for s in sessions if s.user == "big"]
    small = [s for s in sessions if s.user == "small"]
    assert len(big) + len(small) == 200 and 125 < len(big) < 175  # weight 3:1 -> 150 expected
    assert all(s.turns[0].input_len == 24 and s.turns[0].output_len == 6 for s in big)
    assert all(s.turns[0].input_len == 80 and s.turns[0].output_len == 12 for s in small)


@pytest.mark.parametrize("bad", ["a:1:2", "a:0:5:5", ":1:5:5", "a:x:5:5", "a:1:5:5:5", "a:1:5:5:0/3", "a:1:5:5:2/-1",
                                 "a:1:5:5:2/3:1"])
def test_bad_tenant_specs_are_refused(bad):
    with pytest.raises(ValueError, match="--tenants"):
        parse_tenants(bad)


def test_bad_specs_are_refused(bench_tokenizer):
    with pytest.raises(ValueError, match="--workload"):
        build(bench_tokenizer, name="nope")
    with pytest.raises(ValueError, match="--num-prompts"):
        build(bench_tokenizer, num_prompts=0)


def test_poisson_arrivals():
    assert poisson_arrivals(5, math.inf, 0) == [0.0] * 5
    t = poisson_arrivals(4000, 4.0, 1)
    assert t == poisson_arrivals(4000, 4.0, 1) and t[0] == 0.0
    gaps = np.diff(t)
    assert (gaps >= 0).all() and abs(gaps.mean() - 0.25) < 0.02
    assert abs(gaps.std() - 0.25) < 0.03  # exponential: std equals mean


def test_rag_requests_combine_pool_documents_at_the_reuse_rate(bench_tokenizer):
    from ember.bench.offline import prompts_of
    from ember.bench.online import ClientConfig, build_payload

    spec = WorkloadSpec(name="rag", num_prompts=40, num_docs=6, doc_len=48, docs_per_request=3, doc_reuse=1.0,
                        input_len=12, output_len=4)
    sessions = build_workload(spec, bench_tokenizer)
    docs = [tuple(s.turns[0].documents) for s in sessions]
    pool = {d for ds in docs for d in ds}
    assert len(pool) == 6 and all(len(set(ds)) == 3 for ds in docs)
    assert len(set(docs)) > 10  # combinations and orders vary
    assert all(45 <= len(bench_tokenizer.encode(d)) <= 48 for d in pool)
    fresh = build_workload(WorkloadSpec(name="rag", num_prompts=40, num_docs=6, doc_len=48, docs_per_request=3,
                                        doc_reuse=0.5), bench_tokenizer)
    seen = [d for s in fresh for d in s.turns[0].documents]
    assert 0.3 < 1 - len(set(seen)) / len(seen) < 0.7  # about half the documents repeat
    turn = sessions[0].turns[0]
    chat = build_payload(ClientConfig("http://x", "chat"), turn, [], None)["messages"][-1]["content"]
    assert [p.get("cache_control") for p in chat] == [{"type": "chunk"}] * 3 + [None]
    plain = build_payload(ClientConfig("http://x", "completions", chunk_marks=False), turn, [], None)
    marked = build_payload(ClientConfig("http://x", "completions"), turn, [], None)
    assert "".join(marked["documents"]) + marked["prompt"] == plain["prompt"] and "documents" not in plain
    prompt, _ = prompts_of(sessions[:1])[0]
    assert prompt == {"documents": marked["documents"], "prompt": marked["prompt"]}
    with pytest.raises(ValueError, match="docs-per-request"):
        build_workload(WorkloadSpec(name="rag", num_docs=2, docs_per_request=3), bench_tokenizer)


def test_priority_levels_leave_the_requests_as_they_were(bench_tokenizer):
    plain = build(bench_tokenizer, name="multi-turn", num_prompts=12, turns=3, seed=5)
    ranked = build(bench_tokenizer, name="multi-turn", num_prompts=12, turns=3, seed=5, priority_levels=3)
    assert [[t.text for t in s.turns] for s in plain] == [[t.text for t in s.turns] for s in ranked]
    levels = [s.turns[0].extra["priority"] for s in ranked]
    assert set(levels) <= {0, 1, 2} and len(set(levels)) > 1
    assert all(t.extra["priority"] == s.turns[0].extra["priority"] for s in ranked for t in s.turns)
    assert levels == session_priorities(len(ranked), 3, 5)
    assert all("priority" not in t.extra for s in plain for t in s.turns)
    with pytest.raises(ValueError, match="--priority-levels"):
        build(bench_tokenizer, priority_levels=-1)


def test_on_off_tenants_send_only_while_on(bench_tokenizer):
    text = "steady:1:16:4,onoff:1:16:4:2/3"
    assert parse_tenants(text) == [("steady", 1.0, 16, 4), ("onoff", 1.0, 16, 4)]
    assert parse_tenant_windows(text) == {"onoff": (2.0, 3.0)}
    sessions = build(bench_tokenizer, name="multi-tenant", num_prompts=400, tenants=parse_tenants(text),
                     tenant_windows=parse_tenant_windows(text))
    arrivals = poisson_arrivals(len(sessions), 20.0, 0)
    sent = [(s.user, t) for s, t in zip(sessions, arrivals) if s.sent_at(t)]
    assert all(t % 5 < 2 for u, t in sent if u == "onoff")  # never in an off period
    steady = sum(u == "steady" for u, _ in sent)
    onoff = sum(u == "onoff" for u, _ in sent)
    assert steady == sum(s.user == "steady" for s in sessions)  # the steady tenant loses none
    assert 0.25 < onoff / steady < 0.55  # on 2 s of every 5: 40% of its stream
    # the simulator sends the same requests
    from ember.sim.workload import bench_sessions
    spec = WorkloadSpec(name="multi-tenant", num_prompts=400, tenants=parse_tenants(text),
                        tenant_windows=parse_tenant_windows(text))
    assert [s.user for s in bench_sessions(spec, 20.0)] == [u for u, _ in sent]
