"""KV presses in the serving path: a press compacts each sequence's cache once its prompt is in,
and generation goes on at the sequence's own positions over what was kept."""

from __future__ import annotations

import pytest
import torch

from ember import EngineConfig, SamplingParams
from ember.kv.press import KV_PRESSES
from ember.kv.press.compact import compact
from tests.engine.conftest import assert_no_leak, count_near_ties
from tests.engine.test_positions import close_logprobs

PARAMS = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=5)


def long_prompts(mixed_prompts, n=4, min_len=100):
    return [p for p in mixed_prompts if len(p["prompt_token_ids"]) >= min_len][:n]


def test_compaction_keeps_exactly_the_selected_entries(make_llm, mixed_prompts):
    """After `compact`, the sequence's cache holds the selected entries of every layer, bit for
    bit, in fresh private blocks; its position is unchanged and the old blocks are released."""
    llm = make_llm()
    engine = llm.engine
    prompt = long_prompts(mixed_prompts, 1)[0]
    rid = engine.add_request(prompt, SamplingParams(max_tokens=4, ignore_eos=True))
    seq = engine.groups[rid][0]
    while not seq.output_token_ids:
        engine.step()
    total, table = seq.num_cached_tokens, torch.tensor(seq.block_ids)
    before = [engine.kv_cache.gather(layer, table, total) for layer in range(engine.kv_cache.num_layers)]
    used = engine.kv.pool.num_used_blocks
    press = KV_PRESSES.create("streaming", 0.5)
    assert compact(press, engine.kv_cache, engine.kv, seq)
    keep = int(total * 0.5)
    assert seq.num_cached_tokens == keep and seq.num_computed_tokens == total
    assert len(seq.block_ids) == -(-keep // 16) and engine.kv.pool.num_used_blocks == used - len(table) + len(seq.block_ids)
    kept = torch.cat([torch.arange(4), torch.arange(total - keep + 4, total)])
    for layer, (k, v) in enumerate(before):
        k2, v2 = engine.kv_cache.gather(layer, torch.tensor(seq.block_ids), keep)
        assert torch.equal(k2, k[kept]) and torch.equal(v2, v[kept])
    while engine.has_unfinished():
        engine.step()
    engine.release(rid)
    assert_no_leak(llm)


# snapkv stands for the presses that read queries; the others are slow to keep `make test`
# short (their scores are held to the oracle in tests/kv/test_attention_presses.py, kvcrush's and
# merge's rules below, in the default suite)
@pytest.mark.parametrize("press", ["knorm", "snapkv"] + [  # streaming runs in the swap test below and in tests/eval
    pytest.param(name, marks=pytest.mark.slow) for name in ("streaming", "tova", "kvcrush", "merge", "observed", "expected-attention")])
def test_press_in_the_serving_path(make_llm, mixed_prompts, press):
    """press:0.5 on a mixed batch: the fused step and the batched backend agree with the
    torch reference pressing the same way; a ratio of 0 changes nothing; the press changes the
    output of long prompts; the prompt's own blocks stay in the prefix cache for the next
    request; n > 1 siblings are pressed each; nothing leaks."""
    prompts = long_prompts(mixed_prompts)
    runs = {}
    for name, config in {"default": {}, "batched": {"fused_decode": "off"},
                         "torch": {"attention": "torch", "fused_decode": "off"}}.items():
        llm = make_llm(kv_press=f"{press}:0.5", **config)
        runs[name] = [o.outputs[0] for o in llm.generate(prompts, PARAMS)]
        assert_no_leak(llm)
    for name in ("default", "batched"):
        assert count_near_ties(runs["torch"], runs[name]) <= 1
        close_logprobs(runs["torch"], runs[name], tol=2e-3)
    plain = [o.outputs[0] for o in make_llm().generate(prompts, PARAMS)]
    assert [o.token_ids for o in plain] != [o.token_ids for o in runs["torch"]]
    zero = [o.outputs[0] for o in make_llm(kv_press=f"{press}:0").generate(prompts, PARAMS)]
    assert [o.token_ids for o in zero] == [o.token_ids for o in plain]

    llm = make_llm(kv_press=f"{press}:0.5")
    first = llm.generate(prompts[0], PARAMS)[0].outputs[0]
    hits = llm.engine.kv.stats.hits
    again = llm.generate(prompts[0], PARAMS)[0].outputs[0]
    assert llm.engine.kv.stats.hits - hits >= 16 * ((len(prompts[0]["prompt_token_ids"]) - 1) // 16)
    assert again.token_ids == first.token_ids  # a prefix hit, then the same press
    forked = llm.generate(prompts[0], SamplingParams(n=3, temperature=0, max_tokens=8, ignore_eos=True))[0]
    assert all(o.token_ids == first.token_ids for o in forked.outputs)
    assert_no_leak(llm)


def test_press_survives_swap_preemption(make_llm, mixed_prompts):
    """A pool too small for every sequence at once: pressed sequences swap out and back with
    their compacted blocks and counts, and end as they do alone."""
    prompts = long_prompts(mixed_prompts, 6)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=5)
    alone = make_llm(kv_press="streaming:0.5", max_num_seqs=1)
    reference = [alone.generate(p, params)[0].outputs[0] for p in prompts]
    llm = make_llm(kv_press="streaming:0.5", kv_cache_tokens=16 * 24, max_num_seqs=6, preemption="swap",
                   swap_space="16MiB", enable_prefix_caching=False)
    outs = [o.outputs[0] for o in llm.generate(prompts, params)]
    assert llm.engine.scheduler.preemptor.num_swapped_in > 0
    assert count_near_ties(reference, outs) <= 1
    assert_no_leak(llm)


@pytest.mark.parametrize("spec, message", [("nope", "kv_press 'nope' is not one of: expected-attention, knorm, kvcrush, merge"),
                                           ("streaming:1.5", r"share of entries removed, in \[0, 1\)"),
                                           ("streaming:x", "must be a number")])
def test_bad_press_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(kv_press=spec)


def test_knorm_keeps_the_smallest_key_norms():
    """The kept entries are the num_kept smallest mean key norms over the KV heads, in cache order."""
    torch.manual_seed(0)
    keys = torch.randn(40, 3, 64) * torch.rand(40, 1, 1) * 4
    kept = KV_PRESSES.create("knorm", 0.5).select(0, keys, keys, 20)
    norms = keys.norm(dim=-1).mean(dim=-1)
    assert kept.tolist() == sorted(kept.tolist()) and len(kept) == 20
    assert norms[kept].max() <= norms[[i for i in range(40) if i not in kept.tolist()]].min()


def test_bad_press_base_is_a_clear_error():
    with pytest.raises(ValueError, match="kv_press_base 'streaming' is not a scoring press: expected-attention"):
        EngineConfig(kv_press="kvcrush", kv_press_base="streaming")
    with pytest.raises(ValueError, match="kvcrush_share must lie in"):
        EngineConfig(kvcrush_share=1.5)


def scored(seed=0, total=64, heads=3):
    torch.manual_seed(seed)
    keys = torch.randn(total, heads, 64) * (0.5 + torch.rand(total, heads, 1) * 4)
    return keys, torch.randn(total, heads, 64)


def test_kvcrush_keeps_the_base_top_and_spreads_the_rest():
    """With share 0 KVCrush is its base press; with share s, the base's top (1-s) of the budget
    stays, and the rest are evicted entries picked evenly along the Hamming-distance order."""
    keys, values = scored()
    config = EngineConfig(kv_press_base="knorm", kvcrush_share=0.0)
    base = KV_PRESSES.create("knorm", 0.5).select(0, keys, values, 32)
    assert torch.equal(KV_PRESSES.create("kvcrush", 0.5, config).select(0, keys, values, 32), base)
    config.kvcrush_share = 0.25
    kept = KV_PRESSES.create("kvcrush", 0.5, config).select(0, keys, values, 32)
    assert len(kept) == 32 and kept.tolist() == sorted(set(kept.tolist()))
    top = set(KV_PRESSES.create("knorm", 0.5).select(0, keys, values, 24).tolist())
    assert top <= set(kept.tolist())
    # the rule written out with loops: signatures over heads, majority anchor, distance order
    score = -keys.norm(dim=-1).T  # knorm's [Hkv, T]
    evicted = [t for t in score.mean(0).argsort(descending=True).tolist()[24:]]
    top_half = [set(score[h].argsort(descending=True)[:32].tolist()) for h in range(3)]
    sig = {t: [t in top_half[h] for h in range(3)] for t in evicted}
    anchor = [sum(sig[t][h] for t in evicted) / len(evicted) > 0.5 for h in range(3)]
    order = sorted(evicted, key=lambda t: sum(a != b for a, b in zip(sig[t], anchor)))  # stable
    step = len(order) // 8
    assert set(kept.tolist()) - top == {order[i * step] for i in range(8)}


def test_merge_folds_evicted_values_into_the_nearest_kept_entry():
    """Sinks and the last entry stay; each kept value is the mean of itself and the evicted
    values nearest to it, so the values' sum weighted by group size is preserved."""
    keys, values = scored(1)
    press = KV_PRESSES.create("merge", 0.5, EngineConfig(kv_press_base="knorm"))
    index = press.select(0, keys, values, 32)
    assert {0, 1, 2, 3, 63} <= set(index.tolist())
    k, v = press.gather(0, keys, values, index)
    assert torch.equal(k, keys[index])
    owner = torch.tensor([min(range(32), key=lambda j: (abs(int(index[j]) - t), j)) for t in range(64)])
    for j in range(32):
        assert torch.allclose(v[j], values[owner == j].mean(0), atol=1e-6)


@pytest.mark.parametrize("press", ["streaming", "snapkv"])
def test_pressed_again_every_n_decode_steps(make_llm, mixed_prompts, press):
    """--kv-press-interval 8: each sequence's entries grow to its first press's budget + 8, then
    are pressed back to the budget (snapkv from the queries of the 8 tokens since); the fused
    step and the torch reference agree, and nothing leaks."""
    prompts = long_prompts(mixed_prompts, 3)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=5)
    runs = {}
    for name, config in {"default": {}, "torch": {"attention": "torch", "fused_decode": "off"}}.items():
        llm = make_llm(kv_press=f"{press}:0.5", kv_press_interval=8, **config)
        runs[name] = [o.outputs[0] for o in llm.generate(prompts, params)]
        assert not llm.engine._press_budget
        assert_no_leak(llm)
    engine = llm.engine  # again, step by step, watching the entries each sequence holds
    for p in prompts:
        engine.add_request(p, params)
    budgets, peak = {}, {}
    while engine.has_unfinished():
        engine.step()
        for r in engine.scheduler.running:
            budget = engine._press_budget.get(r.request_id)
            if budget is not None:
                budgets[r.request_id] = budget
                peak[r.request_id] = max(peak.get(r.request_id, 0), r.num_cached_tokens)
                assert r.num_cached_tokens <= budget + 7  # pressed in the step that reaches budget + 8
                assert r.num_dropped_tokens == r.num_computed_tokens - r.num_cached_tokens
    assert len(budgets) == 3 and all(peak[k] == budgets[k] + 7 for k in budgets)  # grew to the bound, no more
    assert count_near_ties(runs["torch"], runs["default"]) <= 1
    once = [o.outputs[0] for o in make_llm(kv_press=f"{press}:0.5").generate(prompts, params)]
    assert [o.token_ids for o in once] != [o.token_ids for o in runs["default"]]  # the later presses change the output


def test_press_interval_must_not_be_negative():
    with pytest.raises(ValueError, match="kv_press_interval must not be negative"):
        EngineConfig(kv_press_interval=-1)
