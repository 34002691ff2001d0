"""The chunk cache and blend plans through the real scheduler and KV manager, without a model:
what a plan covers, what it holds and gives back, eviction, and keys apart from exact prefixes."""

from __future__ import annotations

from ember.kv.block_pool import BlockPool
from ember.kv.chunks import ChunkCache
from tests.engine.scheduling import BS, TOKENS, make, req, step


def doc(n: int) -> list[int]:
    return [next(TOKENS) for _ in range(n)]


def chunked(rid: str, parts: list[tuple[list[int], bool]], max_tokens: int = 2):
    tokens, spans = [], []
    for piece, is_chunk in parts:
        if is_chunk:
            spans.append((len(tokens), len(tokens) + len(piece)))
        tokens += piece
    r = req(rid, tokens=tokens, max_tokens=max_tokens)
    r.chunk_spans = spans
    return r


def test_register_and_lookup_by_content_with_a_partial_last_block():
    pool = BlockPool(8)
    cache = ChunkCache(pool, BS)
    tokens = tuple(doc(2 * BS + 1))
    assert cache.lookup(tokens) is None
    blocks = pool.allocate(3)
    cache.register(tokens, blocks)
    assert cache.lookup(tokens) == blocks
    assert cache.lookup(tokens[:-1]) is None  # another chunk, though a prefix of this one
    pool.free(blocks)
    assert cache.cached_blocks() == 3 and pool.num_free_blocks == 8  # held for reuse, yet allocatable
    pool.allocate(8)  # the pool needs every block: the chunk is evicted
    assert cache.lookup(tokens) is None and cache.cached_blocks() == 0 and cache.num_chunks == 0


def test_a_plan_covers_the_chunks_after_the_cached_prefix_and_stops_before_the_last_token():
    s = make(budget=64)
    a, b, question = doc(6), doc(5), doc(3)
    r = chunked("r", [(doc(2), False), (a, True), (doc(1), False), (b, True), (question, False)])
    plan = s.kv.plan_blend(r, 0)
    assert [(u.start, u.end) for u in plan.chunks] == [(2, 8), (9, 14)]
    assert (plan.start, plan.end) == (0, 14)
    assert s.kv.plan_blend(r, 3).chunks[0].start == 9  # a chunk the prefix cache cut into is prefilled
    tail = chunked("t", [(doc(2), False), (a, True)])  # ends with a chunk: its last token is left out
    assert s.kv.plan_blend(tail, 0).end == len(tail.prompt_token_ids) - 1
    s.kv.enable_chunk_cache = False
    assert s.kv.plan_blend(r, 0) is None


def test_admission_takes_the_whole_blend_range_and_gives_the_chunk_blocks_back_indexed():
    s = make(budget=4, num_blocks=64)
    a, b = doc(9), doc(7)
    first = chunked("first", [(a, True), (b, True), (doc(3), False)])
    s.add(first)
    out, _ = step(s)
    assert out.scheduled == [(first, 16)]  # the 16-token blend range, though the budget is 4
    assert first.blend is None  # released after the step
    assert s.kv.chunks.lookup(tuple(a)) is not None and s.kv.chunks.lookup(tuple(b)) is not None
    stats = s.kv.chunks.stats
    assert (stats.lookups, stats.hits, stats.blends) == (2, 0, 1)
    while s.num_unfinished:
        step(s)
    # the same documents in the other order, with another question: both found
    second = chunked("second", [(b, True), (a, True), (doc(2), False)])
    s.add(second)
    step(s)
    assert (stats.lookups, stats.hits, stats.tokens_reused) == (4, 2, 16)
    while s.num_unfinished:
        step(s)
    s.kv.pool.check_consistency()
    assert s.kv.pool.num_used_blocks == 0


def test_a_chunk_twice_in_one_prompt_is_filled_once_and_released_once():
    s = make(budget=64)
    a = doc(5)
    r = chunked("r", [(a, True), (doc(1), False), (a, True), (doc(2), False)])
    s.add(r)
    out = s.schedule()
    uses = r.blend.chunks
    assert [u.fill for u in uses] == [True, False] and uses[0].blocks is uses[1].blocks
    s.update(out, {})
    s.finish(r, r.status.FINISHED_ABORTED)
    s.kv.pool.check_consistency()
    assert s.kv.pool.num_used_blocks == 0 and s.kv.chunks.lookup(tuple(a)) == uses[0].blocks


def test_no_room_for_the_chunks_means_plain_prefill_and_an_abort_leaks_nothing():
    s = make(budget=64, num_blocks=6)  # the prompt needs 5 blocks; its chunks would need 4 more
    r = chunked("r", [(doc(8), True), (doc(8), True), (doc(2), False)])
    s.add(r)
    out = s.schedule()
    assert r.blend is None and out.scheduled == [(r, 18)]
    s.finish(r, r.status.FINISHED_ABORTED)
    assert s.kv.pool.num_used_blocks == 0
    # with room: a plan is taken, and aborting before the step gives every block back unindexed
    s2 = make(budget=64, num_blocks=16)
    r2 = chunked("r2", [(doc(8), True), (doc(2), False)])
    s2.add(r2)
    s2.schedule()
    assert r2.blend is not None and s2.kv.pool.num_used_blocks == 3 + 2
    s2.finish(r2, r2.status.FINISHED_ABORTED)
    s2.kv.pool.check_consistency()
    assert s2.kv.pool.num_used_blocks == 0 and s2.kv.chunks.num_chunks == 0


def test_blended_blocks_are_found_only_by_prompts_with_the_same_chunk_marks():
    s = make(budget=64)
    system, a, question = doc(8), doc(8), doc(4)
    parts = [(system, False), (a, True), (question, False)]
    s.add(chunked("blended", parts))
    while s.num_unfinished:
        step(s)
    plain = req("plain", tokens=system + a + question)
    assert s.kv.peek_prefix(plain) == 8  # the exact system blocks only: the rest may be blended
    again = chunked("again", parts)
    assert s.kv.peek_prefix(again) == 16


def test_precomputed_chunks_are_held_then_cached():
    s = make(num_blocks=8)
    a, b = tuple(doc(5)), tuple(doc(3))
    uses, cached = s.kv.reserve_chunks([a, b, a])
    assert cached == 1 and [len(u.blocks) for u in uses] == [2, 1]
    s.kv.store_chunks(uses, computed=True)
    assert s.kv.pool.num_used_blocks == 0 and s.kv.chunks.lookup(a) is not None
    assert s.kv.reserve_chunks([a, b]) == ([], 2)
    try:
        s.kv.reserve_chunks([tuple(doc(40))])
    except ValueError as e:
        assert "10 KV blocks" in str(e)
    else:
        raise AssertionError("a chunk larger than the pool must be refused")
