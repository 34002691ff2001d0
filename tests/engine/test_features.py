"""Prefix caching, forks, seeds, stop strings, aborts, logprobs: each through the whole engine."""

from __future__ import annotations

import math

import pytest
import torch

from ember import SamplingParams
from ember.request import RequestStatus
from tests.engine.conftest import assert_no_leak


@pytest.fixture(scope="module")
def llm(make_llm):
    return make_llm(max_num_seqs=16)


@pytest.fixture(autouse=True)
def _no_leak_after(request):
    yield
    if "llm" in request.fixturenames:
        assert_no_leak(request.getfixturevalue("llm"))


def shared_prefix_prompts(llm, topics_text, n=6):
    system = llm.tokenizer.encode(topics_text[:3000])[:200]  # 12.5 blocks of shared prefix
    tails = [llm.tokenizer.encode(f" Question {i}: what does section {i} say?") for i in range(n)]
    return [{"prompt_token_ids": system + t} for t in tails], len(system)


def test_prefix_cache_hits_and_same_outputs(make_llm, topics_text):
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    cached = make_llm(enable_prefix_caching=True)
    prompts, prefix_len = shared_prefix_prompts(cached, topics_text)
    first = cached.generate(prompts[:1], params)  # fills the cache
    stats_before = cached.engine.kv.stats.hits
    rest = cached.generate(prompts[1:], params)
    hit_tokens = cached.engine.kv.stats.hits - stats_before
    assert hit_tokens >= (len(prompts) - 1) * (prefix_len // 16) * 16
    plain = make_llm(enable_prefix_caching=False)
    expected = plain.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in first + rest] == [o.outputs[0].token_ids for o in expected]
    assert plain.engine.kv.stats.hits == 0
    assert_no_leak(cached)
    assert_no_leak(plain)


def test_cached_blocks_evicted_only_when_needed(make_llm, topics_text):
    llm = make_llm(kv_cache_tokens=20 * 16)
    prompts, _ = shared_prefix_prompts(llm, topics_text, n=2)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    llm.generate(prompts[:1], params)
    pool = llm.engine.kv.pool
    assert pool.num_cached_blocks >= 12 and pool.num_evictions == 0
    # A long unrelated prompt needs most of the pool: cached blocks give way, LRU first.
    other = {"prompt_token_ids": llm.tokenizer.encode(topics_text[50_000:60_000])[:300]}
    llm.generate(other, params)
    assert pool.num_evictions > 0
    assert_no_leak(llm)


def test_n4_shares_prompt_blocks(llm, topics_text):
    prompt = {"prompt_token_ids": llm.tokenizer.encode(topics_text[:4000])[:100]}  # 7 blocks, last partial
    params = SamplingParams(n=4, temperature=1.0, max_tokens=3, seed=11, ignore_eos=True)
    engine = llm.engine
    rid = engine.add_request(prompt, params)
    seqs = engine.groups[rid]
    engine.step()  # prefill of the parent; the children fork from it
    assert all(len(s.output_token_ids) == 1 for s in seqs)
    held = {b for s in seqs for b in s.block_ids}
    assert len(held) == 7, f"4 sequences hold {len(held)} distinct blocks, the prompt needs 7"
    engine.step()  # first decode: each writes into the shared partial block -> copy on write
    held = {b for s in seqs for b in s.block_ids}
    assert len(held) == 6 + 4
    while engine.has_unfinished():
        engine.step()
    texts = [engine.text_state(s).text for s in seqs]
    assert len(set(tuple(s.output_token_ids) for s in seqs)) > 1, texts
    engine.release(rid)


def test_seeded_sampling_same_alone_and_in_batch(llm, mixed_prompts):
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=10, seed=42, ignore_eos=True)
    alone = llm.generate(mixed_prompts[0], params)[0].outputs[0].token_ids
    others = SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True)
    batch = llm.generate(mixed_prompts[:6], [params] + [others] * 5)
    assert batch[0].outputs[0].token_ids == alone
    again = llm.generate(mixed_prompts[0], SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=10,
                                                          seed=43, ignore_eos=True))
    assert again[0].outputs[0].token_ids != alone


def test_stop_string_across_token_boundary(llm):
    prompt = "The capital of France is"
    params = SamplingParams(temperature=0, max_tokens=16)
    full = llm.generate(prompt, params)[0].outputs[0]
    # a stop string that starts inside one token and ends in a later one
    ids = full.token_ids
    pieces = [llm.tokenizer.decode(ids[:i]) for i in range(len(ids) + 1)]
    boundary = next(i for i in range(2, len(ids)) if len(pieces[i]) > len(pieces[i - 1]) + 1)
    stop = pieces[boundary][len(pieces[boundary - 1]) - 1:len(pieces[boundary - 1]) + 1]
    assert len(stop) == 2
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=16, stop=[stop]))[0].outputs[0]
    expected = full.text[:full.text.find(stop)]
    assert out.text == expected and stop not in out.text
    assert out.finish_reason == "stop" and out.stop_reason == stop
    streamed = "".join(llm.stream(prompt, SamplingParams(temperature=0, max_tokens=16, stop=[stop])))
    assert streamed == expected


def test_stop_token_ids_and_max_tokens(llm):
    full = llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=10))[0].outputs[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 10
    stop_id = full.token_ids[3]
    out = llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop_id]))
    first = full.token_ids.index(stop_id)
    assert out[0].outputs[0].token_ids == full.token_ids[:first + 1]
    assert out[0].outputs[0].stop_reason == stop_id


def test_eos_stops_unless_ignored(llm):
    chat = [{"role": "user", "content": "Say hi."}]
    out = llm.chat(chat, SamplingParams(temperature=0, max_tokens=64))[0].outputs[0]
    assert out.finish_reason == "stop" and out.token_ids[-1] == llm.tokenizer.eos_token_id
    ignored = llm.chat(chat, SamplingParams(temperature=0, max_tokens=len(out.token_ids) + 3, ignore_eos=True))
    assert ignored[0].outputs[0].finish_reason == "length"


def test_abort_mid_prefill_and_mid_decode(make_llm, mixed_prompts):
    llm = make_llm(max_num_batched_tokens=16)
    engine = llm.engine
    long_prompt = max(mixed_prompts, key=lambda p: len(p["prompt_token_ids"]))
    a = engine.add_request(long_prompt, SamplingParams(max_tokens=50))
    b = engine.add_request(mixed_prompts[0], SamplingParams(max_tokens=50, n=2))
    engine.step()
    seq_a = engine.groups[a][0]
    assert 0 < seq_a.num_computed_tokens < seq_a.num_prompt_tokens  # mid-prefill
    engine.abort_request(a)
    assert seq_a.status is RequestStatus.FINISHED_ABORTED
    while not engine.groups[b][0].output_token_ids:
        engine.step()
    engine.step()  # mid-decode
    engine.abort_request(b)
    assert not engine.has_unfinished()
    engine.release(a)
    engine.release(b)
    assert_no_leak(llm)


def test_logprobs_match_log_softmax(llm, ember_lm):
    prompt = "The quick brown fox"
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=3, logprobs=3, prompt_logprobs=2))[0]
    ids = out.prompt_token_ids + out.outputs[0].token_ids
    from ember.kernels.attention import AttentionMetadata
    hidden = ember_lm.model(torch.tensor(ids), torch.arange(len(ids)), AttentionMetadata.no_cache([len(ids)]))
    ref = ember_lm.model.compute_logits(hidden).log_softmax(-1)
    n = len(out.prompt_token_ids)
    for step, entry in enumerate(out.outputs[0].logprobs):
        token = out.outputs[0].token_ids[step]
        assert math.isclose(entry[token].logprob, float(ref[n - 1 + step, token]), abs_tol=1e-4)
        assert entry[token].rank == 1  # greedy picks the most likely
        assert len(entry) >= 3
    assert out.prompt_logprobs[0] is None
    for pos in range(1, n):
        token = out.prompt_token_ids[pos]
        assert math.isclose(out.prompt_logprobs[pos][token].logprob, float(ref[pos - 1, token]), abs_tol=1e-4)


def test_bad_values_are_clear_errors(llm):
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate({"prompt_token_ids": [1, 10**9]})
    with pytest.raises(ValueError, match="empty"):
        llm.generate("")
    from ember import LLM
    with pytest.raises(ValueError, match="max_num_seqs"):
        LLM(loaded=None, max_num_seqs=0)
    with pytest.raises(ValueError, match="unknown engine option"):
        LLM(max_num_seq=3)
    # The policy's name is checked where the engine builds it: it names the option and the choices.
    with pytest.raises(ValueError, match=r"unknown scheduling policy 'nope'; choose one of: .*fcfs"):
        LLM(loaded=llm.engine.loaded, policy="nope", kv_cache_tokens=64)
    with pytest.raises(ValueError, match="priority must be an integer, got 'high'"):
        llm.generate("Hi", priority="high")
    with pytest.raises(ValueError, match="2 prompts but 3 priorities"):
        llm.generate(["Hi", "Ho"], priority=[0, 1, 2])


def test_priority_policy_starts_lower_values_first(make_llm):
    llm = make_llm(policy="priority", max_num_seqs=1)
    prompts = ["One,", "Two,", "Three,"]
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    outs = llm.generate(prompts, params, priority=[2, 0, 1])
    starts = [o.metrics.first_scheduled_time for o in outs]
    assert starts[1] < starts[2] < starts[0]  # the order they ran in, not a duration
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert_no_leak(llm)
