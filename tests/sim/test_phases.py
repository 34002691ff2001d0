"""The fused step's phase split: per-phase models recovered from profile rows, and the overlap
saving they give; a model without the split refuses --overlap."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ember.sim.calibrate import build_model_json
from ember.sim.phases import fit_phases, overlap_saving
from ember.sim.runner import step_seconds
from ember.sim.step_model import FEATURES, model_from_json
from tests.sim.test_calibrate import synthetic_steps, write_profile


def write_fused_profile(path, n: int = 200):
    """Rows whose fused linear phase is 0.02 + 1e-3 per decode row and attention 2e-6 per context
    entry; every fifth step ran without the fused step (empty phase cells)."""
    X, y = synthetic_steps(n=n)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("step", "wall_start", "step_s", "fused_linear_s", "fused_attention_s") + FEATURES)
        for i, (row, s) in enumerate(zip(X, y)):
            prefill, decode, context, seqs, pairs = map(int, row)
            fused = ("", "") if i % 5 == 0 else (f"{0.02 + 1e-3 * decode:.9f}", f"{2e-6 * context + 1e-5:.9f}")
            w.writerow((i, 1000.0 + i, f"{s:.9f}", *fused, prefill, decode, context, seqs, pairs))
    return X


def test_each_phase_is_recovered_and_the_overlap_saves_the_smaller(tmp_path):
    write_fused_profile(tmp_path / "steps.csv")
    phases = fit_phases([str(tmp_path / "steps.csv")])
    assert phases["rows"] == 160
    lin, att = phases["fused_linear_s"], phases["fused_attention_s"]
    assert lin["intercept"] == pytest.approx(0.02, rel=1e-6) and lin["coefficients"]["decode_rows"] == pytest.approx(1e-3)
    assert att["coefficients"]["context_len_sum"] == pytest.approx(2e-6, rel=1e-6)
    data = build_model_json([str(tmp_path / "steps.csv")], None)
    save = overlap_saving(data, 0.5)
    assert save(0, 10, 3000, 10) == pytest.approx(0.5 * min(0.03, 2e-6 * 3000 + 1e-5))
    att = 2e-6 * 3000 + 1e-5
    pim = overlap_saving(data, 1.0, pim_speedup=4.0)  # attention at a quarter, then hidden under the GEMMs
    assert pim(0, 10, 3000, 10) == pytest.approx(0.75 * att + min(0.03, att / 4))
    data["model"] = model_from_json(data)
    plain, overlapped = step_seconds(data), step_seconds(data, overlap=1.0)
    assert plain(0, 10, 3000, 10) - overlapped(0, 10, 3000, 10) == pytest.approx(2e-6 * 3000 + 1e-5)


def test_a_model_without_the_split_refuses_overlap(tmp_path):
    X, y = synthetic_steps(n=50)
    write_profile(tmp_path / "steps.csv", X, y)
    data = build_model_json([str(tmp_path / "steps.csv")], None)
    assert data["phases"] is None
    with pytest.raises(ValueError, match="need the fused step's phase split"):
        overlap_saving(data, 0.5)
    with pytest.raises(ValueError, match=r"--overlap must be in \[0, 1\]"):
        overlap_saving(data, 1.5)
    with pytest.raises(ValueError, match="--pim-attention-speedup must be at least 1"):
        overlap_saving(data, 0.0, 0.5)
