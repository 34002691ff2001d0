"""Step profiles (engine/profile.py) from a real engine: one row per step, composition columns
that agree with what was scheduled, phase times that add up, the fused step's own phases."""

from __future__ import annotations

import csv

import pytest

from ember import SamplingParams
from ember.engine.profile import COLUMNS, FUSED_PHASES, NO_CLOCK, PHASES
from tests.engine.conftest import assert_no_leak

PARAMS = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture
def make_llm(make_llm):
    """One thread: nothing here depends on the thread count, and on a busy 2-core machine two
    OpenMP threads that spin-wait on each other run these steps ~10x slower."""
    def make(**config):
        config.setdefault("threads", 1)
        return make_llm(**config)
    return make


def read_rows(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def prompts(llm, topics_text, lengths):
    ids = llm.tokenizer.encode(topics_text[:20_000])
    out, start = [], 0
    for n in lengths:
        out.append(ids[start:start + n])
        start += n
    return out


def test_one_row_per_step_with_the_scheduled_composition(make_llm, topics_text, tmp_path):
    # A small token budget: prompts go in chunks, mixed with the decodes of the others.
    llm = make_llm(enable_prefix_caching=False, max_num_batched_tokens=40)
    engine = llm.engine
    lengths = [23, 70, 5]
    for ids in prompts(llm, topics_text, lengths):
        engine.add_request({"prompt_token_ids": ids}, PARAMS)
    path = tmp_path / "steps.csv"
    expected = []
    with engine.profiler.enable(str(path)):
        while engine.has_unfinished():
            unfinished = len(engine.requests)
            engine.step()
            # what the step just did, read back from the engine's own state; blocks held after
            # the step equal those held after scheduling unless a request finished in it
            finished = len(engine.requests) < unfinished
            expected.append({"num_seqs": engine.last_step.num_seqs, "waiting": len(engine.scheduler.waiting),
                             "kv_blocks_used": None if finished else engine.kv.pool.num_used_blocks})
            assert engine.profiler.last.step == len(expected) - 1
    header, rows = read_rows(path)
    assert tuple(header) == COLUMNS
    assert len(rows) == len(expected) == engine.profiler.num_steps
    assert [int(r["step"]) for r in rows] == list(range(len(rows)))
    assert sum(int(r["prefill_tokens"]) for r in rows) == sum(lengths)
    # every request's first token comes from its prefill, each later one from a decode row
    assert sum(int(r["decode_rows"]) for r in rows) == len(lengths) * (PARAMS.max_tokens - 1)
    assert all(int(r["prefill_tokens"]) <= 40 for r in rows)
    assert int(rows[0]["context_len_sum"]) == int(rows[0]["prefill_tokens"])  # nothing cached before
    # a prompt's chunks tile its causal attention: L(L+1)/2 query-key pairs whatever the chunking
    assert max(int(r["prefill_tokens"]) for r in rows) < max(lengths)  # the 70-token prompt was chunked
    assert sum(int(r["prefill_attention"]) for r in rows) == sum(n * (n + 1) // 2 for n in lengths)
    assert all(int(r["prefill_attention"]) == 0 for r in rows if int(r["prefill_tokens"]) == 0)
    for row, want in zip(rows, expected):
        assert int(row["num_seqs"]) == want["num_seqs"]
        assert int(row["num_seqs"]) >= int(row["decode_rows"])
        assert int(row["waiting"]) == want["waiting"]
        assert int(row["preempted"]) == 0
        if want["kv_blocks_used"] is not None:
            assert int(row["kv_blocks_used"]) == want["kv_blocks_used"]
        assert int(row["kv_blocks_used"]) >= -(-int(row["context_len_sum"]) // llm.config.block_size)
    # in a decode-only step with every sequence in, each attends to its prompt and its output so far
    decode_only = [r for r in rows if int(r["prefill_tokens"]) == 0 and int(r["num_seqs"]) == 3]
    assert decode_only
    for r in decode_only:
        assert int(r["context_len_sum"]) > sum(lengths)
    for earlier, later in zip(decode_only, decode_only[1:]):
        assert int(later["context_len_sum"]) - int(earlier["context_len_sum"]) == \
            3 * (int(later["step"]) - int(earlier["step"]))
    assert_no_leak(llm)


def test_phase_times_are_complete(make_llm, topics_text, tmp_path):
    llm = make_llm()
    path = tmp_path / "steps.csv"
    with llm.engine.profiler.enable(str(path)):
        llm.generate([{"prompt_token_ids": p} for p in prompts(llm, topics_text, [12, 30])], PARAMS)
    _, rows = read_rows(path)
    assert len(rows) >= PARAMS.max_tokens
    for r in rows:
        phases = {p: float(r[p + "_s"]) for p in PHASES}
        assert all(v >= 0 for v in phases.values())
        assert phases["forward"] > 0 and phases["logits"] > 0 and phases["sample"] > 0
        assert sum(phases.values()) <= float(r["step_s"])
        assert float(r["wall_start"]) > 1e9  # Unix time
    starts = [float(r["wall_start"]) for r in rows]
    assert starts == sorted(starts)


def test_fused_phases_when_the_fused_step_runs(make_llm, topics_text, tmp_path):
    llm = make_llm()
    decoder = llm.engine.runner.decoder
    if decoder is None:
        pytest.skip(f"the fused decode step is off here: {llm.engine.fused_decode_off_reason}")
    path = tmp_path / "steps.csv"
    with llm.engine.profiler.enable(str(path)):
        llm.generate([{"prompt_token_ids": p} for p in prompts(llm, topics_text, [9, 17])], PARAMS)
    assert decoder.phase_seconds is None  # its timers go off with the profile
    _, rows = read_rows(path)
    for r in rows:
        fused = [r[p + "_s"] for p in FUSED_PHASES]
        if int(r["decode_rows"]) > 0:
            values = [float(v) for v in fused]
            assert all(v >= 0 for v in values) and sum(values) > 0
            assert sum(values) <= float(r["forward_s"])
        elif not decoder.takes_prefill:
            assert fused == ["", "", ""]


def test_no_fused_columns_on_the_pytorch_path(make_llm, topics_text, tmp_path):
    llm = make_llm(fused_decode="off")
    path = tmp_path / "steps.csv"
    with llm.engine.profiler.enable(str(path)):
        llm.generate([{"prompt_token_ids": p} for p in prompts(llm, topics_text, [9])], PARAMS)
    _, rows = read_rows(path)
    assert rows and all(r[p + "_s"] == "" for r in rows for p in FUSED_PHASES)
    assert all(float(r["forward_s"]) > 0 for r in rows)


def test_forks_prefill_once_and_decode_apart(make_llm, topics_text, tmp_path):
    llm = make_llm(enable_prefix_caching=False)
    path = tmp_path / "steps.csv"
    (ids,) = prompts(llm, topics_text, [14])
    with llm.engine.profiler.enable(str(path)):
        llm.generate({"prompt_token_ids": ids}, SamplingParams(n=3, temperature=0.8, seed=1, max_tokens=4,
                                                               ignore_eos=True))
    _, rows = read_rows(path)
    assert sum(int(r["prefill_tokens"]) for r in rows) == len(ids)  # the siblings share the prompt's blocks
    assert sum(int(r["decode_rows"]) for r in rows) == 3 * (4 - 1)
    assert_no_leak(llm)


def test_context_counts_cache_entries_after_a_drop(make_llm, topics_text, tmp_path):
    llm = make_llm(enable_prefix_caching=False)
    engine = llm.engine
    (ids,) = prompts(llm, topics_text, [40])
    engine.add_request({"prompt_token_ids": ids}, PARAMS)
    (seq,) = engine.requests.values()
    with engine.profiler.enable(str(tmp_path / "steps.csv")):
        engine.step()  # the prompt: 40 entries, 2 full blocks
        engine.kv.drop_blocks(seq, [0])  # its first block leaves the cache; positions go on
        engine.step()
        last = engine.profiler.last
    assert (last.decode_rows, last.prefill_tokens) == (1, 0)  # position 40, past the prompt
    assert last.context_len_sum == 40 - 16 + 1
    engine.abort_request(seq.group_id)
    engine.release(seq.group_id)
    assert_no_leak(llm)


def test_preemptions_are_counted(make_llm, topics_text, tmp_path):
    # three sequences of 8 + 8 tokens in 4-token blocks need 12 blocks; 9 force preemptions
    llm = make_llm(block_size=4, kv_cache_tokens=9 * 4, enable_prefix_caching=False)
    path = tmp_path / "steps.csv"
    before = llm.engine.scheduler.num_preemptions
    with llm.engine.profiler.enable(str(path)):
        llm.generate([{"prompt_token_ids": p} for p in prompts(llm, topics_text, [8, 8, 8])],
                     SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    _, rows = read_rows(path)
    preempted = llm.engine.scheduler.num_preemptions - before
    assert preempted > 0
    assert sum(int(r["preempted"]) for r in rows) == preempted
    assert max(int(r["kv_blocks_used"]) for r in rows) <= 9
    assert_no_leak(llm)


def test_disabled_writes_nothing(make_llm, topics_text, tmp_path):
    llm = make_llm()
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    profiler = llm.engine.profiler
    assert not profiler.enabled and profiler.clock() is NO_CLOCK
    batch = [{"prompt_token_ids": p} for p in prompts(llm, topics_text, [9])]
    llm.generate(batch, params)
    assert profiler.last is None and profiler.num_steps == 0
    path = tmp_path / "steps.csv"
    profiler.enable(str(path))
    llm.generate(batch, params)
    profiler.disable()
    written = path.read_text()
    llm.generate(batch, params)  # after disable: no more rows
    assert path.read_text() == written and len(written.splitlines()) == 1 + params.max_tokens
    assert not profiler.enabled and profiler.clock() is NO_CLOCK
    profiler.disable()  # twice is fine


@pytest.mark.parametrize("where, message", [("missing/steps.csv", "no directory"), (".", "is a directory")])
def test_a_bad_path_is_a_clear_error(make_llm, tmp_path, where, message):
    llm = make_llm()
    with pytest.raises(ValueError, match=f"cannot write the step profile to .*{message}"):
        llm.engine.profiler.enable(str(tmp_path / where))
    assert not llm.engine.profiler.enabled
