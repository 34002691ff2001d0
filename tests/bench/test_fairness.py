"""Fairness figures from hand-made client records: service counted as VTC counts it, backlog
intervals, the largest service gap while two clients are both backlogged, and Jain's index."""

from __future__ import annotations

import pytest

from ember.bench.fairness import backlog_intervals, fairness, service_events
from ember.bench.metrics import RequestResult


def rec(user, start, chunks, prompt=10, output=None):
    return RequestResult(True, start, end=chunks[-1], chunk_times=list(chunks), prompt_tokens=prompt,
                         output_tokens=len(chunks) if output is None else output, user=user)


def test_service_counts_prompts_at_the_first_token_and_outputs_per_chunk():
    ev = service_events([rec("a", 0.0, [1.0, 2.0], prompt=10, output=4)], weights={"a": 2.0})
    assert ev == {"a": [(1.0, 2.0), (1.0, 5.0), (2.0, 2.0)]}  # 10/2; each chunk 2 tokens x 2 / 2 (sorted)


def test_backlog_intervals_merge_overlaps_and_skip_failures():
    rs = [rec("a", 0.0, [1.0]), rec("a", 0.5, [3.0]), rec("a", 5.0, [6.0]),
          RequestResult(False, 0.0, end=9.0, user="a")]
    assert backlog_intervals(rs) == {"a": [(0.0, 3.0), (5.0, 6.0)]}


def test_gap_and_jain_while_both_clients_are_backlogged():
    # both backlogged over [0, 10]: a is served 10 + 2 at t=1, 3, 5; b once at t=9
    rs = [rec("a", 0.0, [1.0]), rec("a", 0.0, [3.0]), rec("a", 0.0, [5.0]), rec("a", 0.0, [10.0]),
          rec("b", 0.0, [9.0]), rec("b", 0.0, [10.0])]
    f = fairness(rs, batch_tokens=4)
    assert f["service"] == {"a": 48.0, "b": 24.0}
    assert f["max_gap"] == pytest.approx(36.0)  # a leads by 36 at t=5..9
    assert f["vtc_bound"] == 2 * max(10, 2 * 4)
    assert f["all_backlogged_s"] == pytest.approx(10.0)
    assert f["jain"] == pytest.approx((48 + 24) ** 2 / (2 * (48 ** 2 + 24 ** 2)))


def test_no_gap_without_a_common_backlog():
    rs = [rec("a", 0.0, [1.0]), rec("b", 2.0, [3.0])]
    f = fairness(rs)
    assert f["max_gap"] == 0.0 and "jain" not in f
