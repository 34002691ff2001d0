"""Positions apart from cached length: a sequence whose first cache blocks are dropped keeps
its RoPE positions and attends to the entries that remain, on every path (the fused C step,
the batched backend, the torch reference)."""

from __future__ import annotations

import pytest

from ember import SamplingParams
from ember.engine.scheduler import SchedulerOutput
from ember.kernels import native
from tests.engine.conftest import assert_no_leak, count_near_ties

PARAMS = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=5)
PATHS = {"fused": {}, "torch": {"attention": "torch", "fused_decode": "off"}}


def run_with_drops(llm, prompts, drops: dict[int, tuple[int, list[int]]]):
    """Generate `prompts` together; `drops[i] = (after, blocks)` takes those cache blocks out of
    prompt i once `after` of its tokens are computed. Returns the outputs and the requests."""
    engine = llm.engine
    ids = [engine.add_request(p, PARAMS) for p in prompts]
    seqs = [engine.groups[i][0] for i in ids]
    pending = dict(drops)
    try:
        while engine.has_unfinished():
            engine.step()
            for i, (after, blocks) in list(pending.items()):
                if seqs[i].num_computed_tokens >= after and not seqs[i].is_finished:
                    engine.kv.drop_blocks(seqs[i], blocks)
                    del pending[i]
        assert not pending, "a drop never happened"
        return [llm._output(i).outputs[0] for i in ids], seqs
    finally:
        for i in ids:
            engine.release(i)


def close_logprobs(a, b, tol: float) -> float:
    """Largest difference of the chosen tokens' logprobs where both runs chose the same token."""
    worst = 0.0
    for x, y in zip(a, b):
        for i, (ta, tb) in enumerate(zip(x.token_ids, y.token_ids)):
            if ta != tb:
                break
            worst = max(worst, abs(x.logprobs[i][ta].logprob - y.logprobs[i][tb].logprob))
    assert worst <= tol, f"logprobs differ by {worst:.2e}"
    return worst


@pytest.mark.parametrize("path", PATHS)
def test_dropping_a_block_before_it_is_read_equals_the_suffix_alone(make_llm, mixed_prompts, path):
    """RoPE scores depend on relative positions only: if the first block leaves the cache right
    after its chunk is computed, before anything attends to it, the rest of the sequence is
    computed exactly as the suffix alone would be, at positions shifted by one block."""
    prompts = [p["prompt_token_ids"] for p in mixed_prompts if len(p["prompt_token_ids"]) > 40][:3]
    llm = make_llm(max_num_batched_tokens=16, max_num_seqs=1, enable_prefix_caching=False, **PATHS[path])
    dropped, seqs = [], []
    for p in prompts:  # one at a time, so each first chunk is exactly block 0
        outs, reqs = run_with_drops(llm, [{"prompt_token_ids": p}], {0: (16, [0])})
        dropped += outs
        seqs += reqs
    assert all(s.num_dropped_tokens == 16 and s.num_computed_tokens == s.num_tokens - 1 for s in seqs)
    suffix = [o.outputs[0] for o in llm.generate([{"prompt_token_ids": p[16:]} for p in prompts], PARAMS)]
    assert count_near_ties(suffix, dropped) <= 1
    close_logprobs(suffix, dropped, tol=2e-3)
    whole = [o.outputs[0] for o in llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS)]
    assert [o.token_ids for o in whole] != [o.token_ids for o in dropped]  # the drop mattered
    assert_no_leak(llm)


def test_drops_mid_generation_agree_across_paths(make_llm, mixed_prompts):
    """Drop blocks 1 and 2 (keeping block 0 as an attention sink) of some sequences while they
    decode beside others that keep everything; the fused step (when it builds) and the batched
    backend agree with the torch reference computed the same way."""
    prompts = [p for p in mixed_prompts if len(p["prompt_token_ids"]) > 60][:4]
    drops = {0: (64, [1, 2]), 2: (70, [1, 2])}
    runs = {}
    for name, config in {"default": {}, "batched": {"fused_decode": "off"}, **PATHS}.items():
        llm = make_llm(**config)
        if name == "default":
            assert (llm.engine.runner.decoder is not None) == native.available()
        runs[name], seqs = run_with_drops(llm, prompts, drops)
        assert [s.num_dropped_tokens for s in seqs] == [32, 0, 32, 0]
        assert_no_leak(llm)
    for name in ("default", "batched"):
        assert count_near_ties(runs["torch"], runs[name]) <= 1
        close_logprobs(runs["torch"], runs[name], tol=2e-3)
    kept = [o.outputs[0] for o in make_llm().generate(prompts, PARAMS)]
    assert kept[1].token_ids == runs["torch"][1].token_ids  # neighbours are untouched
    assert kept[0].token_ids != runs["torch"][0].token_ids or kept[2].token_ids != runs["torch"][2].token_ids


def test_drop_blocks_bookkeeping(make_llm, mixed_prompts):
    """Dropped blocks go back to the pool, the request's later blocks are not indexed in the
    prefix cache (block i no longer holds tokens i*16..), and only full blocks can go."""
    llm = make_llm(max_num_batched_tokens=16, max_num_seqs=1)
    engine = llm.engine
    prompt = next(p for p in mixed_prompts if len(p["prompt_token_ids"]) > 80)
    rid = engine.add_request(prompt, PARAMS)
    seq = engine.groups[rid][0]
    while seq.num_computed_tokens < 48:
        engine.step()
    used = engine.kv.pool.num_used_blocks
    with pytest.raises(ValueError, match="full blocks"):
        engine.kv.drop_blocks(seq, [3])
    engine.kv.drop_blocks(seq, [1, 2])
    assert engine.kv.pool.num_used_blocks == used - 2 and len(seq.block_ids) == 1
    assert seq.num_cached_tokens == 16 and seq.num_computed_tokens == 48
    # The next chunk: positions go on from 48, its entries land in cache slots 16..31.
    assert engine.kv.allocate_slots(seq, 16)
    ids, positions, meta = engine.runner.prepare([(seq, 0, 16)])
    assert ids.tolist() == seq.token_slice(48, 64) and positions.tolist() == list(range(48, 64))
    assert meta.context_lens == [32] and meta.slot_mapping.tolist() == [seq.block_ids[1] * 16 + i for i in range(16)]
    while engine.has_unfinished():
        engine.step()
    engine.release(rid)
    hits_before = engine.kv.stats.hits
    llm.generate(prompt, SamplingParams(max_tokens=1))
    assert engine.kv.stats.hits - hits_before == 48  # the blocks cached before the drop, none after
    assert_no_leak(llm)
