"""Reports: JSON round trip, bad files refused with a message, PNG charts from hand-made runs."""

import math

import pytest

from ember.bench.metrics import RequestResult, compute_metrics
from ember.bench.plots import plot_reports
from ember.bench.report import load_report, new_report, print_reports, save_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    from PIL import Image

    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def fake_report(label, rates, scale=1.0):
    """A serve report with one run per rate, from hand-made timelines (no server involved)."""
    rep = new_report("serve", label)
    for k, rate in enumerate(rates):
        results = [RequestResult(True, i * 0.1, end=i * 0.1 + scale * (1 + k),
                                 chunk_times=[i * 0.1 + scale * (0.2 + 0.1 * j + 0.05 * k) for j in range(5)],
                                 prompt_tokens=10, output_tokens=5) for i in range(6)]
        rep["runs"].append({"request_rate": rate, "max_concurrency": None, "metrics": compute_metrics(results, 2.0),
                            "requests": [r.to_json() for r in results]})
    return rep


def test_json_round_trip_keeps_inf_rates(tmp_path):
    rep = fake_report("a", [1.0, math.inf])
    path = tmp_path / "sub" / "a.json"
    save_report(rep, str(path))
    back = load_report(str(path))
    assert [r["request_rate"] for r in back["runs"]] == [1.0, math.inf]
    assert back["runs"][0]["metrics"]["completed"] == 6
    assert RequestResult.from_json(back["runs"][1]["requests"][0]).output_tokens == 5


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"runs": []}'])
def test_files_that_are_not_reports_are_refused(tmp_path, content):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="x.json"):
        load_report(str(path))
    with pytest.raises(ValueError, match="cannot read"):
        load_report(str(tmp_path / "missing.json"))


def test_compare_plots_cdfs_and_sweeps(tmp_path):
    a, b = fake_report("ember", [1.0, 2.0, math.inf]), fake_report("peer", [1.0, 2.0, math.inf], scale=2.0)
    paths = plot_reports([a, b], str(tmp_path))
    names = sorted(p.rsplit("/", 1)[-1] for p in paths)
    assert names == ["cdf_e2el.png", "cdf_itl.png", "cdf_ttft.png", "p99_ttft_vs_rate.png",
                     "request_throughput_vs_rate.png", "throughput_vs_rate.png"]
    for p in paths:
        assert_png(p)


def test_table_prints_ratio_of_two_runs():
    from rich.console import Console

    console = Console(record=True, width=200)
    print_reports([fake_report("ember", [math.inf]), fake_report("peer", [math.inf], scale=2.0)], console)
    text = console.export_text()
    assert "peer rate=inf / ember rate=inf" in text
    ttft_row = next(line for line in text.splitlines() if "TTFT mean" in line)
    assert ttft_row.rstrip(" │").endswith("2.00")  # every time doubled: TTFT ratio 2
