"""Engine fixtures: one fp32 model shared by many engines with different configurations."""

from __future__ import annotations

import random

import pytest

from ember import LLM


@pytest.fixture(scope="session")
def make_llm(ember_lm):
    def make(**config) -> LLM:
        config.setdefault("kv_cache_tokens", 8192)
        config.setdefault("threads", 2)
        return LLM(loaded=ember_lm, **config)
    return make


@pytest.fixture(scope="session")
def mixed_prompts(ember_lm, topics_text) -> list[dict]:
    """32 prompts of mixed lengths (4..160 tokens) cut from real text."""
    ids = ember_lm.tokenizer.encode(topics_text[:200_000])
    rng = random.Random(1234)
    prompts = []
    for _ in range(32):
        n = rng.randint(4, 160)
        start = rng.randrange(0, len(ids) - n)
        prompts.append({"prompt_token_ids": ids[start:start + n]})
    return prompts


def assert_no_leak(llm: LLM) -> None:
    """Every block is free or cached-evictable; nothing is still held by a request."""
    pool = llm.engine.kv.pool
    pool.check_consistency()
    assert pool.num_used_blocks == 0, f"{pool.num_used_blocks} KV blocks still held"
    assert not llm.engine.requests
    assert not llm.engine.scheduler.running and not llm.engine.scheduler.waiting
    preemptor = llm.engine.scheduler.preemptor
    assert not getattr(preemptor, "swapped", {}), "host swap blocks still held"
    assert_no_scratch_leak(llm)


def assert_no_scratch_leak(llm: LLM) -> None:
    """A codec's scratch pool (kv/scratch.py: KIVI's residual) is back to full once the engine
    drained, but for the partial last blocks of chunks the chunk cache still indexes."""
    pool, scratch = llm.engine.kv.pool, llm.engine.kv_cache.scratch
    if scratch is None:
        return
    held = scratch.held()
    kept = [b for b in held if pool.ref_counts[b] == 0 and pool.block_hash[b] is not None]
    assert len(held) == len(kept), f"scratch slots still held by blocks {sorted(set(held) - set(kept))}"
    assert scratch.num_free == scratch.num_slots - len(held)
    host = getattr(llm.engine.scheduler.preemptor, "host", None)
    if host is not None and host.cache.scratch is not None:
        assert host.cache.scratch.num_free == host.cache.scratch.num_slots, "host scratch slots still held"


# At a near-tie, GEMM blocking may flip the argmax: both candidates must then be within this
# many nats in the reference run (vLLM's check_logprobs_close applies the same idea).
NEAR_TIE_NATS = 0.02


def count_near_ties(reference, outputs, nats: float = NEAR_TIE_NATS) -> int:
    """Number of sequences that diverged at a near-tie; fails on any other difference."""
    near_ties = 0
    for ref, out in zip(reference, outputs):
        if ref.token_ids == out.token_ids:
            continue
        i = next(j for j, (a, b) in enumerate(zip(ref.token_ids, out.token_ids)) if a != b)
        alts = ref.logprobs[i]
        a, b = ref.token_ids[i], out.token_ids[i]
        assert b in alts, f"token {b} at step {i} is not among the reference's top alternatives"
        gap = alts[a].logprob - alts[b].logprob
        assert gap <= nats, f"diverged at step {i} with a logprob gap of {gap:.4f} nats"
        near_ties += 1
    return near_ties
