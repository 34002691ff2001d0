"""`ember sim calibrate`: fit step-time models to step-profile rows and keep the best kind.

The rows are what `ember bench throughput --profile steps.csv` (or `engine.profiler`) writes:
one per engine step, its duration `step_s` and its composition (ember/engine/profile.py). Every
kind (step_model.py) is scored by mean absolute percentage error on held-out contiguous runs of
steps (5-fold blocked cross-validation); the best is refitted on every row and saved with its
error, the others' errors, and the engine configuration the profile came from (a model is only
valid for that configuration: model, dtype, linear method, KV codec, threads...).

`inter_step_s` is the median time between one step's end and the next one's start while the
engine is busy (the loop's own work outside `step_s`); the simulator adds it to every step.
"""

from __future__ import annotations

import csv
import datetime
import math

import numpy as np

from ember.json_file import read_json
from ember.sim.fitting import fit_nonnegative_linear, fit_split_linear, fit_tree, mape
from ember.sim.step_model import FEATURES, LATER_FEATURES, model_from_json

SCHEMA = 1
FOLDS = 5  # blocked cross-validation: each fold holds out a fifth of the steps, contiguous
BUSY_GAP_S = 0.05  # a longer pause between steps is the engine waiting for work, not overhead
MIN_ROWS = 10
SIMPLER_BY_PCT = 1e-3  # held-out MAPE points a more complex kind must gain (exact fits tie in float noise)
REQUIRED = tuple(f for f in FEATURES if f not in LATER_FEATURES)
FITS = {"linear": fit_nonnegative_linear, "split-linear": fit_split_linear, "tree": fit_tree}


def read_table(path: str, need: tuple[str, ...]) -> tuple[dict[str, int], list[list[str]]]:
    """(column name -> index, rows) of a step-profile CSV that has every column of `need`."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            rows = list(reader)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error):
        raise ValueError(f"{path} is not a text CSV file") from None
    missing = [c for c in need if c not in header]
    if missing:
        raise ValueError(f"{path} is not a step profile (ember/engine/profile.py): no column {', '.join(missing)}")
    return {c: i for i, c in enumerate(header)}, rows


def feature_row(col: dict[str, int], row: list[str]) -> list[int]:
    """FEATURES of one profile row; a column that profiles gained later (LATER_FEATURES) reads as
    0 where an older profile lacks it, so its coefficient fits to nothing."""
    return [int(row[col[c]]) if c in col else 0 for c in FEATURES]


def read_profile(path: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(features, step seconds, median busy inter-step gap) of a step-profile CSV."""
    col, rows = read_table(path, ("wall_start", "step_s") + REQUIRED)
    try:
        X = np.array([feature_row(col, r) for r in rows], dtype=np.int64).reshape(-1, len(FEATURES))
        y = np.array([float(r[col["step_s"]]) for r in rows])
        start = np.array([float(r[col["wall_start"]]) for r in rows])
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{path}: a row is short or holds a value that is not a number ({exc})") from None
    keep = y > 0  # a zero-length step has no relative error to fit
    if keep.sum() < MIN_ROWS:
        raise ValueError(f"{path} has {int(keep.sum())} usable steps; calibration needs at least {MIN_ROWS}")
    gaps = start[1:] - (start[:-1] + y[:-1])
    busy = gaps[(gaps >= 0) & (gaps < BUSY_GAP_S)]
    return X[keep], y[keep], float(np.median(busy)) if len(busy) else 0.0


def calibrate(X: np.ndarray, y: np.ndarray, seed: int = 0, kind: str = "auto") -> dict:
    """Score every kind by blocked cross-validation; the best, refitted on all rows, as JSON.

    The rows are a time series (neighbouring steps have nearly the same batch), so a random
    split would score a regressor on near copies of its training rows: each of FOLDS folds holds
    out a contiguous run of steps instead. `kind` "auto" keeps the lowest error; a kind's name
    keeps that one (step-level error is not end-to-end error: benchmarks/README.md). `seed` is
    kept for the record; the folds are fixed.
    """
    fits = FITS
    if kind != "auto" and kind not in fits:
        raise ValueError(f"--kind must be auto, {', '.join(fits)}, got {kind!r}")
    errors: dict[str, list[float]] = {k: [] for k in fits}
    totals: dict[str, list[float]] = {k: [] for k in fits}
    for test in np.array_split(np.arange(len(y)), FOLDS):
        train = np.setdiff1d(np.arange(len(y)), test)
        for name, fit in fits.items():
            model = fit(X[train], y[train])
            errors[name].append(mape(model, X[test], y[test]))
            totals[name].append(sum(model.predict(*map(int, row)) for row in X[test]) / float(y[test].sum()))
    mean = {k: float(np.mean(v)) for k, v in errors.items()}
    selected_by = "held-out step error" if kind == "auto" else "--kind"
    if kind == "auto":  # FITS runs simplest first: a later kind must beat it by more than rounding
        kind = min(mean, key=lambda k: mean[k] + SIMPLER_BY_PCT * list(fits).index(k))
    model = fits[kind](X, y)
    compared = {k: {"holdout_mape_pct": mean[k], "holdout_mape_pct_folds": errors[k],
                    "holdout_total_time_ratio": float(np.mean(totals[k]))} for k in fits}
    return {"kind": kind, "features": list(FEATURES), **model.to_json(), "holdout_mape_pct": mean[kind],
            "holdout_total_time_ratio": compared[kind]["holdout_total_time_ratio"], "compared": compared,
            "rows": int(len(y)), "holdout": f"{FOLDS} contiguous folds", "seed": seed, "selected_by": selected_by}


def read_profiles(paths: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
    """Several profiles of one engine configuration (e.g. a saturated offline run and a served
    run at low load, so both big and small batches are covered) as one set of rows."""
    parts = [read_profile(p) for p in paths]
    gaps = [g for _, _, g in parts if g > 0]
    return (np.vstack([X for X, _, _ in parts]), np.concatenate([y for _, y, _ in parts]),
            float(np.median(gaps)) if gaps else 0.0)


def build_model_json(profiles: list[str], engine: dict | None, seed: int = 0, kind: str = "auto",
                     replay: tuple | None = None) -> dict:
    """The model JSON. `replay` = (EngineConfig, Capacity, runs of replay.replay_runs): every kind
    also simulates the profiled runs, and "auto" keeps the kind that reproduces them best."""
    from ember.sim.phases import fit_phases

    X, y, gap = read_profiles(profiles)
    fitted = calibrate(X, y, seed, kind)
    if replay:
        from ember.sim.replay import replay_error

        scores = {}
        for name, entry in fitted["compared"].items():
            predict = FITS[name](X, y).predict
            scores[name], entry["replay"] = replay_error(lambda *f, p=predict: p(*f) + gap, *replay)
            entry["replay_error_pct"] = scores[name]
        if kind == "auto" and min(scores, key=scores.get) != fitted["kind"]:
            chosen = min(scores, key=scores.get)
            for key in ("intercept", "coefficients", "nodes", "decode_only", "with_prefill"):
                fitted.pop(key, None)
            entry = fitted["compared"][chosen]
            fitted.update(kind=chosen, **FITS[chosen](X, y).to_json(), holdout_mape_pct=entry["holdout_mape_pct"],
                          holdout_total_time_ratio=entry["holdout_total_time_ratio"])
        if kind == "auto":
            fitted["selected_by"] = "replay of the profiled runs"
        fitted["request_latency_s"] = request_latency(fitted["compared"][fitted["kind"]]["replay"], replay[2])
    return {"ember_sim_model": SCHEMA, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "profiles": list(profiles), "engine": engine, "inter_step_s": gap, **fitted,
            "ranges": {f: [int(X[:, i].min()), int(X[:, i].max())] for i, f in enumerate(FEATURES)},
            "phases": fit_phases(profiles)}


def request_latency(replayed: list[dict], runs) -> float:
    """Seconds a request spends outside the engine (HTTP, template, tokenizing, the first token's
    delivery), from the served runs replayed: their measured mean TTFT less the simulated one,
    averaged (offline runs have no server; 0 when none was served or the engine alone explains it)."""
    gaps = [measured["ttft_ms"]["mean"] * (1.0 - row["ttft_ms"]) / 1000.0
            for row, (_, rate, measured) in zip(replayed, runs) if math.isfinite(rate) and "ttft_ms" in row]
    return max(0.0, sum(gaps) / len(gaps)) if gaps else 0.0


def load_model_json(path: str) -> dict:
    """A model JSON written by `ember sim calibrate`, checked; `["model"]` holds the predictor."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("ember_sim_model") != SCHEMA:
        raise ValueError(f"{path} is not an `ember sim calibrate` model (schema {SCHEMA})")
    data["model"] = model_from_json(data)
    gap = data.get("inter_step_s", 0.0)
    if not isinstance(gap, (int, float)) or not math.isfinite(gap) or gap < 0:
        raise ValueError(f"{path}: inter_step_s must be a non-negative number of seconds")
    late = data.get("request_latency_s", 0.0)
    if not isinstance(late, (int, float)) or not math.isfinite(late) or late < 0:
        raise ValueError(f"{path}: request_latency_s must be a non-negative number of seconds")
    return data


def plot_predictions(model_json: dict, profiles: list[str], path: str) -> None:
    """Predicted against measured step time for every row, log-log, with the y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    X, y, _ = read_profiles(profiles)
    model = model_from_json(model_json)
    pred = np.array([model.predict(*map(int, row)) for row in X]) * 1000.0
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(y * 1000.0, pred, s=6, alpha=0.5)
    lo, hi = min(y.min() * 1000, pred.min()), max(y.max() * 1000, pred.max())
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
    ax.set(xscale="log", yscale="log", xlabel="measured step (ms)", ylabel="predicted step (ms)",
           title=f"{model_json['kind']} step model, held-out MAPE {model_json['holdout_mape_pct']:.1f}%")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
