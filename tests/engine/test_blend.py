"""CacheBlend in the serving engine, on the real model: a full recompute equals full prefill, the
rotated keys equal keys computed in place, and blending survives chunked prefill, preemption
(recompute and swap), aborts and evictions without a leaked block."""

from __future__ import annotations

import pytest
import torch

from ember import SamplingParams
from ember.kernels.attention import AttentionMetadata
from ember.kv.chunks import ChunkUse
from ember.models.llama_blend import rotate_keys
from tests.engine.conftest import assert_no_leak, count_near_ties

QUESTION = "\n\nQuestion: which statement do the passages above describe? Answer:"


@pytest.fixture(scope="module")
def documents(topics_text) -> list[str]:
    """Six passages of about 100 tokens each, cut from the evaluation text."""
    return [topics_text[20_000 + i * 5_000:20_000 + i * 5_000 + 400] for i in range(6)]


def greedy(n: int = 6) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, logprobs=3)


def test_a_full_recompute_equals_full_prefill_wherever_the_documents_were_cached(make_llm, documents):
    prompts = [{"documents": documents[:3], "prompt": QUESTION}, {"documents": documents[2::-1], "prompt": QUESTION}]
    reference = make_llm(enable_chunk_cache=False).generate(prompts, greedy())
    llm = make_llm(blend_recompute_ratio=1.0)
    report = llm.warm_chunks(documents[:3][::-1])  # cached alone, in another order
    assert report["computed"] == 3 and report["tokens_computed"] == report["tokens"] > 0
    outputs = llm.generate(prompts, greedy())
    stats = llm.engine.kv.chunks.stats
    assert stats.hits == stats.lookups == 6 and stats.blends == 2 and stats.tokens_recomputed == stats.tokens_reused
    assert count_near_ties([r.outputs[0] for r in reference], [o.outputs[0] for o in outputs]) == 0
    for ref, out in zip(reference, outputs):
        first_ref, first_out = ref.outputs[0].logprobs[0], out.outputs[0].logprobs[0]
        for token, lp in first_ref.items():
            assert first_out[token].logprob == pytest.approx(lp.logprob, abs=2e-3)
    assert_no_leak(llm)


def test_a_partial_recompute_reuses_cached_entries_and_changes_the_answer_only_a_little(make_llm, documents):
    prompt = {"documents": documents[3:6], "prompt": QUESTION}
    ref = make_llm(enable_chunk_cache=False).generate(prompt, SamplingParams(max_tokens=1, logprobs=20))[0]
    llm = make_llm()  # the default ratio
    llm.warm_chunks(documents[3:6])
    out = llm.generate(prompt, SamplingParams(max_tokens=1, logprobs=20))[0]
    stats = llm.engine.kv.chunks.stats
    assert 0 < stats.tokens_recomputed < 0.25 * stats.tokens_reused
    ref_top = set(ref.outputs[0].logprobs[0])
    out_top = set(out.outputs[0].logprobs[0])
    assert len(ref_top & out_top) >= 10  # the next-token distribution stays close to full prefill's


def test_rotated_keys_equal_keys_computed_at_the_new_position(make_llm, documents, ember_lm):
    llm = make_llm()
    engine = llm.engine
    tokens = engine.tokenizer.encode(documents[0])
    prefix = engine.tokenizer.encode(documents[1])[:37]  # an offset that is not a block multiple
    bs, model = engine.kv_cache.block_size, engine.model
    n_alone = -(-len(tokens) // bs)
    alone = list(range(n_alone))
    engine.runner.blender.fill([ChunkUse(0, len(tokens), alone, True, tokens=tuple(tokens))])
    seq = prefix + tokens
    placed = list(range(n_alone, n_alone + -(-len(seq) // bs)))
    slots = torch.tensor([placed[i // bs] * bs + i % bs for i in range(len(seq))])
    meta = AttentionMetadata([len(seq)], [len(seq)], slots, torch.tensor([placed]))
    model(torch.tensor(seq), torch.arange(len(seq)), meta, engine.kv_cache, engine.runner.attention)
    # layer 0's keys depend only on the token and its position: rotation must reproduce them
    k_alone, _ = engine.kv_cache.gather(0, torch.tensor(alone), len(tokens))
    k_placed, _ = engine.kv_cache.gather(0, torch.tensor(placed), len(seq))
    rotated = rotate_keys(k_alone, len(prefix), model.cos, model.sin)
    torch.testing.assert_close(rotated, k_placed[len(prefix):], atol=2e-4, rtol=1e-4)
    assert (k_alone - k_placed[len(prefix):]).abs().max() > 0.1  # the rotation did something


@pytest.fixture(scope="module")
def pressure_prompts(documents) -> list[dict]:
    return [{"documents": [documents[i], documents[i + 2]], "prompt": QUESTION} for i in range(4)]


@pytest.fixture(scope="module")
def pressure_reference(make_llm, pressure_prompts):
    return make_llm(enable_chunk_cache=False).generate(pressure_prompts, greedy(24))


@pytest.mark.parametrize("preemption", ["recompute", pytest.param("swap", marks=pytest.mark.slow)])
def test_blending_under_memory_pressure_with_chunked_prefill(make_llm, pressure_prompts, pressure_reference, preemption):
    prompts, reference = pressure_prompts, pressure_reference
    llm = make_llm(blend_recompute_ratio=1.0, kv_cache_tokens=800, max_num_batched_tokens=32,
                   preemption=preemption, enable_prefix_caching=False)
    outputs = llm.generate(prompts, greedy(24))
    assert llm.engine.scheduler.num_preemptions > 0
    stats = llm.engine.kv.chunks.stats
    assert stats.blends >= 3  # room for the chunk blocks is short too: some prompts are prefilled plainly
    assert count_near_ties([r.outputs[0] for r in reference], [o.outputs[0] for o in outputs]) <= 1
    assert_no_leak(llm)


@pytest.mark.parametrize("codec", ["auto", "kivi4", pytest.param("xquant4", marks=pytest.mark.slow)])
def test_aborting_after_the_blend_and_evicting_chunks_leak_nothing(make_llm, documents, codec):
    """kivi4: a chunk's partial last block keeps its residual slot while the chunk cache indexes
    it, and gives it back when evicted (assert_no_leak checks the scratch pool too). xquant4: the
    blend writes re-rotated chunk entries with their new positions."""
    llm = make_llm(kv_cache_tokens=1024, kv_cache_dtype=codec)
    engine = llm.engine
    rid = engine.add_request({"documents": documents[:2], "prompt": QUESTION}, greedy(50))
    engine.step()  # the blend (and the question's prefill)
    assert engine.kv.chunks.num_chunks == 2
    engine.abort_request(rid)
    engine.release(rid)
    assert_no_leak(llm)
    # other documents need the space: the cached chunks are evicted, and nothing breaks
    llm.generate([{"documents": documents[2:4], "prompt": QUESTION}, {"documents": documents[4:], "prompt": QUESTION}],
                 greedy(4))
    assert engine.kv.pool.num_evictions > 0
    assert_no_leak(llm)
    evicted = [d for d in documents if engine.kv.chunks.lookup(tuple(engine.tokenizer.encode(d))) is None]
    assert evicted and engine.kv.chunks.cached_blocks() < 6 * 7


def test_bad_chunk_marks_are_refused(make_llm):
    engine = make_llm().engine
    with pytest.raises(ValueError, match="chunk span"):
        engine.add_request({"prompt_token_ids": [1, 2, 3], "chunk_spans": [[2, 5]]})
    with pytest.raises(ValueError, match="documents must be a list of strings"):
        engine.add_request({"documents": "text", "prompt": "q"})
    with pytest.raises(ValueError, match="segments\\[0\\].chunk"):
        engine.add_request({"segments": [{"text": "a", "chunk": "yes"}]})
    with pytest.raises(ValueError, match="non-empty strings"):
        engine.warm_chunks([""])
