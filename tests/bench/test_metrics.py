"""Metric arithmetic on hand-made timelines, against values worked out by hand."""

import math

import pytest

from ember.bench.metrics import RequestResult, compute_metrics, meets_slos, parse_goodput, summarize

EXACT = dict(rel=1e-12, abs=1e-9)


def timeline():
    # A: 4 tokens; TTFT 0.5, gaps 0.1 0.2 0.3, E2EL 1.1, TPOT (1.1-0.5)/3 = 0.2
    a = RequestResult(True, 0.0, end=1.1, chunk_times=[0.5, 0.6, 0.8, 1.1], prompt_tokens=10, output_tokens=4)
    # B: 2 tokens; TTFT 0.2, gap 0.1, E2EL 0.4, TPOT (0.4-0.2)/1 = 0.2
    b = RequestResult(True, 1.0, end=1.4, chunk_times=[1.2, 1.3], prompt_tokens=20, output_tokens=2)
    # C: 1 token; TTFT 0.3, no gap, E2EL 0.3, no TPOT
    c = RequestResult(True, 0.2, end=0.5, chunk_times=[0.5], prompt_tokens=5, output_tokens=1)
    # D: failed; must count only as failed
    d = RequestResult(False, 0.3, end=0.31, error="HTTP 400: bad")
    return [a, b, c, d]


def test_per_request_figures():
    a, b, c, _ = timeline()
    assert a.ttft == pytest.approx(0.5, **EXACT)
    assert a.itl == pytest.approx([0.1, 0.2, 0.3], **EXACT)
    assert a.e2el == pytest.approx(1.1, **EXACT)
    assert a.tpot == pytest.approx(0.2, **EXACT)
    assert b.tpot == pytest.approx(0.2, **EXACT)
    assert c.tpot is None and c.itl == []


def test_run_figures():
    m = compute_metrics(timeline(), duration=2.0)
    assert (m["completed"], m["failed"]) == (3, 1)
    assert m["total_input_tokens"] == 35 and m["total_output_tokens"] == 7
    assert m["request_throughput"] == pytest.approx(1.5, **EXACT)
    assert m["output_throughput"] == pytest.approx(3.5, **EXACT)
    assert m["total_token_throughput"] == pytest.approx(21.0, **EXACT)
    # TTFT ms sorted [200, 300, 500]: p90 at rank 1.8 -> 300 + 0.8*200, p99 at 1.98 -> 300 + 0.98*200
    t = m["ttft_ms"]
    assert t["mean"] == pytest.approx(1000 / 3, **EXACT)
    assert t["median"] == pytest.approx(300, **EXACT)
    assert t["p90"] == pytest.approx(460, **EXACT)
    assert t["p99"] == pytest.approx(496, **EXACT)
    assert t["max"] == pytest.approx(500, **EXACT)
    # ITL pools every gap of every request: [100, 200, 300, 100] -> sorted [100, 100, 200, 300]
    i = m["itl_ms"]
    assert i["count"] == 4
    assert i["mean"] == pytest.approx(175, **EXACT)
    assert i["median"] == pytest.approx(150, **EXACT)
    assert i["p90"] == pytest.approx(270, **EXACT)
    assert i["p99"] == pytest.approx(297, **EXACT)
    # TPOT only over requests with more than one token: A and B, both 200 ms
    assert m["tpot_ms"]["count"] == 2 and m["tpot_ms"]["mean"] == pytest.approx(200, **EXACT)
    e = m["e2el_ms"]
    assert e["mean"] == pytest.approx(600, **EXACT) and e["median"] == pytest.approx(400, **EXACT)
    assert m["errors"] == {"HTTP 400: bad": 1}
    assert "goodput" not in m


def test_goodput():
    runs = timeline()
    m = compute_metrics(runs, 2.0, parse_goodput(["ttft:400"]))  # B and C
    assert m["goodput"]["good_requests"] == 2 and m["goodput"]["request_goodput"] == pytest.approx(1.0, **EXACT)
    # TPOT SLO: A and B are at 200 ms; C has one token and counts as TPOT 0 (as vLLM does)
    assert compute_metrics(runs, 2.0, {"tpot": 150.0})["goodput"]["good_requests"] == 1
    # all three: A misses TTFT, B misses E2EL (400 > 350), C meets all
    m = compute_metrics(runs, 2.0, parse_goodput(["ttft:400", "tpot:250", "e2el:350"]))
    assert m["goodput"]["good_requests"] == 1
    assert m["goodput"]["request_goodput"] == pytest.approx(0.5, **EXACT)


def test_goodput_limit_is_inclusive():
    r = RequestResult(True, 0.0, end=0.5, chunk_times=[0.25, 0.5], output_tokens=2)  # dyadic: exact in binary
    assert meets_slos(r, {"ttft": 250.0, "tpot": 250.0, "e2el": 500.0})
    assert not meets_slos(r, {"ttft": 249.0})


def test_percentiles_of_five_values():
    s = summarize([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s["median"] == 3.0 and s["mean"] == 4.0 and s["max"] == 10.0
    assert s["p90"] == pytest.approx(4 + 0.6 * 6, **EXACT)   # rank 3.6
    assert s["p99"] == pytest.approx(4 + 0.96 * 6, **EXACT)  # rank 3.96
    assert summarize([])["count"] == 0


def test_no_completed_requests_gives_zeros_not_errors():
    m = compute_metrics([RequestResult(False, 0.0, error="ConnectError")], duration=0.0)
    assert m["completed"] == 0 and m["failed"] == 1 and m["request_throughput"] == 0.0
    assert m["ttft_ms"]["mean"] == 0.0


@pytest.mark.parametrize("bad", [["ttft"], ["speed:10"], ["ttft:abc"], ["e2el:-1"]])
def test_bad_goodput_specs_are_refused(bad):
    with pytest.raises(ValueError, match="--goodput"):
        parse_goodput(bad)


def test_results_round_trip_through_json():
    a = timeline()[0]
    back = RequestResult.from_json(a.to_json())
    assert back == RequestResult(**{**a.__dict__, "generated_text": ""})
    assert math.isclose(back.tpot, 0.2)
