"""Calibration: the linear fit recovers known coefficients, the comparison keeps the kind that
fits better held out, bad profiles are clear errors, and a saved model predicts what it fitted."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ember.sim.calibrate import build_model_json, calibrate, load_model_json, read_profile
from ember.sim.fitting import fit_nonnegative_linear, fit_tree, mape
from ember.sim.step_model import FEATURES, model_from_json

TRUE = (0.004, [1.5e-4, 4e-4, 2e-6, 0.0, 3e-8])  # intercept, then prefill, decode, context, seqs, pairs


def synthetic_steps(n: int = 600, seed: int = 0, noise: float = 0.0, fn=None):
    """Step compositions like a chunked-prefill engine's, and times from `fn` (default: TRUE)."""
    rng = np.random.default_rng(seed)
    decode = rng.integers(0, 48, n)
    prefill = rng.integers(1, 512, n) * (rng.random(n) < 0.4)
    context = decode * rng.integers(20, 900, n) + prefill
    seqs = np.maximum(decode + (prefill > 0), 1)
    held = rng.integers(0, 1024, n) * (rng.random(n) < 0.5)  # a later chunk of a long prompt
    pairs = prefill * held + prefill * (prefill + 1) // 2
    X = np.stack([prefill, decode, context + held * (prefill > 0), seqs, pairs], axis=1)
    if fn is None:
        a, coef = TRUE
        y = a + X @ np.array(coef)
    else:
        y = np.array([fn(*row) for row in X])
    return X, y * (1 + noise * rng.standard_normal(n))


def write_profile(path, X, y, gap: float = 0.002) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("step", "wall_start", "step_s") + FEATURES + ("waiting",))
        t = 1000.0
        for i, (row, s) in enumerate(zip(X, y)):
            w.writerow((i, f"{t:.6f}", f"{s:.7f}", *map(int, row), 0))
            t += s + gap


def test_nonnegative_least_squares_recovers_the_coefficients():
    X, y = synthetic_steps()
    model = fit_nonnegative_linear(X, y)
    assert model.intercept == pytest.approx(TRUE[0], rel=1e-6)
    assert model.coefficients == pytest.approx(TRUE[1], rel=1e-6, abs=1e-12)


def test_coefficients_stay_non_negative_when_the_unconstrained_fit_would_go_below_zero():
    X, y = synthetic_steps(noise=0.01)
    y = y - 5e-5 * X[:, 3]  # a negative per-sequence term: unconstrained least squares follows it below 0
    A = np.hstack([np.ones((len(y), 1)), X]) / y[:, None]
    assert np.linalg.lstsq(A, np.ones(len(y)), rcond=None)[0].min() < 0  # the premise
    model = fit_nonnegative_linear(X, y)
    assert min([model.intercept] + model.coefficients) >= 0.0
    assert 0.0 in model.coefficients  # a term pinned at the bound
    assert mape(model, X, y) < 10.0


def test_noisy_rows_still_land_near_the_truth_and_linear_wins_on_linear_data():
    X, y = synthetic_steps(n=1500, noise=0.03)
    fitted = calibrate(X, y, seed=1)
    assert fitted["kind"] == "linear"
    assert fitted["compared"]["linear"]["holdout_mape_pct"] < fitted["compared"]["tree"]["holdout_mape_pct"]
    assert fitted["holdout_mape_pct"] < 4.0
    coef = fitted["coefficients"]
    assert coef["prefill_tokens"] == pytest.approx(TRUE[1][0], rel=0.05)
    assert coef["decode_rows"] == pytest.approx(TRUE[1][1], rel=0.05)


def test_the_tree_wins_where_time_jumps_in_steps():
    # a kernel that switches at 64 rows: a jump no sum of the features draws
    X, y = synthetic_steps(n=1500, fn=lambda p, d, c, s, a: 0.005 + (0.03 if d >= 24 else 0.0) + (0.02 if p > 256 else 0.0))
    fitted = calibrate(X, y)
    assert fitted["kind"] == "tree"
    assert fitted["holdout_mape_pct"] < 1.0 < fitted["compared"]["linear"]["holdout_mape_pct"]
    tree = fit_tree(X, y)
    assert tree.predict(0, 40, 100, 40) == pytest.approx(0.035)


def test_model_json_round_trip_and_inter_step_time(tmp_path):
    X, y = synthetic_steps(n=200)
    write_profile(tmp_path / "steps.csv", X[:150], y[:150], gap=0.002)
    write_profile(tmp_path / "more.csv", X[150:], y[150:], gap=0.002)
    data = build_model_json([str(tmp_path / "steps.csv"), str(tmp_path / "more.csv")], {"max_num_seqs": 8}, seed=0)
    assert data["inter_step_s"] == pytest.approx(0.002, abs=2e-6)
    assert data["engine"] == {"max_num_seqs": 8} and data["rows"] == 200
    (tmp_path / "model.json").write_text(json.dumps(data))
    loaded = load_model_json(str(tmp_path / "model.json"))
    for row, seconds in zip(X[:20], y[:20]):
        assert loaded["model"].predict(*map(int, row)) == pytest.approx(seconds, rel=1e-4)


@pytest.mark.parametrize("content, message", [
    ("step,step_s\n0,0.1\n", "no column wall_start"),
    ("", "no column wall_start"),
    ("wall_start,step_s,prefill_tokens,decode_rows,context_len_sum,num_seqs\n1,0.1,5,x,1,1\n", "not a number"),
    ("wall_start,step_s,prefill_tokens,decode_rows,context_len_sum,num_seqs\n1,0.1,5,0,5,1\n", "at least 10"),
])
def test_bad_profiles_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "steps.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_profile(str(path))


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"ember_sim_model": 1, "kind": "forest"}))
    with pytest.raises(ValueError, match="'kind' must be one of linear, split-linear, tree"):
        load_model_json(str(path))
    path.write_text(json.dumps({"ember_sim_model": 1, "kind": "linear", "intercept": 0.0}))
    with pytest.raises(ValueError, match="incomplete"):
        load_model_json(str(path))


def test_a_kind_can_be_kept_whatever_the_error_says():
    X, y = synthetic_steps(n=300)
    fitted = calibrate(X, y, kind="tree")
    assert fitted["kind"] == "tree" and "nodes" in fitted
    assert fitted["compared"]["linear"]["holdout_mape_pct"] < fitted["holdout_mape_pct"]  # both still scored
    with pytest.raises(ValueError, match="--kind must be auto, linear, split-linear, tree"):
        calibrate(X, y, kind="forest")


def test_held_out_steps_are_contiguous_runs():
    # a time series whose second half is slower: a random split would see both halves in training;
    # contiguous folds make each model predict runs it has not seen
    X, y = synthetic_steps(n=500)
    fitted = calibrate(X, np.concatenate([y[:250], 1.5 * y[250:]]))
    assert fitted["holdout"] == "5 contiguous folds"
    assert len(fitted["compared"]["linear"]["holdout_mape_pct_folds"]) == 5
    assert max(fitted["compared"]["linear"]["holdout_mape_pct_folds"]) > 15.0


def test_decode_only_and_prefill_steps_get_their_own_formulas():
    # two code paths: decode-only steps cost 0.02 + 3 ms a row, steps with prompt tokens 0.08 + 0.2 ms a token
    X, _ = synthetic_steps(n=800)
    y = np.where(X[:, 0] > 0, 0.08 + 2e-4 * X[:, 0], 0.02 + 3e-3 * X[:, 1])
    fitted = calibrate(X, y)
    assert fitted["kind"] == "split-linear" and fitted["holdout_mape_pct"] < 1e-6
    assert fitted["compared"]["linear"]["holdout_mape_pct"] > 5.0
    model = model_from_json(fitted)
    assert model.predict(0, 10, 500, 10) == pytest.approx(0.05)
    assert model.predict(100, 10, 500, 11) == pytest.approx(0.10)


def test_profiles_and_models_from_before_prefill_attention_still_load(tmp_path):
    """A profile without the prefill_attention column fits with that term at 0, and a model JSON
    written before it (no such coefficient) predicts as it did."""
    X, y = synthetic_steps(n=300)
    y = y - TRUE[1][4] * X[:, 4]  # times that never depended on it
    with open(tmp_path / "old.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("step", "wall_start", "step_s") + FEATURES[:4])
        for i, (row, s) in enumerate(zip(X, y)):
            w.writerow((i, f"{1000.0 + i:.6f}", f"{s:.7f}", *map(int, row[:4])))
    Xr, yr, _ = read_profile(str(tmp_path / "old.csv"))
    assert (Xr[:, 4] == 0).all() and (Xr[:, :4] == X[:, :4]).all()
    data = build_model_json([str(tmp_path / "old.csv")], None, kind="linear")
    assert data["coefficients"]["prefill_attention"] == 0.0
    old = {"kind": "linear", "intercept": 0.01, "coefficients": {"prefill_tokens": 1e-3, "decode_rows": 2e-3,
                                                                  "context_len_sum": 0.0, "num_seqs": 0.0}}
    assert model_from_json(old).predict(100, 2, 300, 3, 5050) == pytest.approx(0.01 + 0.1 + 0.004)
