"""The fused C step's phase split, for overlap (NanoFlow, TokenWeave) and attention in memory (PIM).

When the fused decode step runs, the profile times its GEMMs (`fused_linear_s`, compute-bound)
and its paged attention (`fused_attention_s`, memory-bound) apart. A linear model of each (same
features, non-negative least squares) lets the simulator ask what a step would take if the two
overlapped (nano-batches: one's GEMMs while another's attention reads KV): up to
min(linear, attention) less, times an overlap efficiency in [0, 1] (`ember sim run --overlap`);
and what a step would take with decode attention offloaded to processing-in-memory that reads KV
s times faster (`--pim-attention-speedup s`).
"""

from __future__ import annotations

import numpy as np

from ember.sim.calibrate import MIN_ROWS, REQUIRED, feature_row, read_table
from ember.sim.fitting import fit_nonnegative_linear, mape
from ember.sim.step_model import FEATURES, LinearStepModel

PHASES = ("fused_linear_s", "fused_attention_s")


def read_phase_rows(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, phase seconds per PHASES, step seconds) of the rows where the fused step ran."""
    col, rows = read_table(path, ("step_s",) + REQUIRED)
    X, T, y = [], [], []
    for r in rows if all(p in col for p in PHASES) else ():  # an older or hand-made profile: no split
        try:
            phases = [float(r[col[p]]) for p in PHASES]
        except (ValueError, IndexError):
            continue  # empty: the fused step did not run in this step
        if min(phases) > 0:
            X.append(feature_row(col, r))
            T.append(phases)
            y.append(float(r[col["step_s"]]))
    return (np.array(X, dtype=np.int64).reshape(-1, len(FEATURES)), np.array(T).reshape(-1, len(PHASES)),
            np.array(y))


def fit_phases(paths: list[str]) -> dict | None:
    """A model per phase, with its (training) error and the phases' share of those steps; None
    when the profiles hold too few fused steps."""
    parts = [read_phase_rows(p) for p in paths]
    X = np.vstack([x for x, _, _ in parts])
    T = np.vstack([t for _, t, _ in parts])
    y = np.concatenate([s for _, _, s in parts])
    if len(X) < MIN_ROWS:
        return None
    out = {"rows": int(len(X)), "share_of_step": {p: float(T[:, i].sum() / y.sum()) for i, p in enumerate(PHASES)}}
    for i, phase in enumerate(PHASES):
        model = fit_nonnegative_linear(X, T[:, i])
        out[phase] = model.to_json() | {"mape_pct": mape(model, X, T[:, i])}
    return out


def overlap_saving(model_json: dict, overlap: float, pim_speedup: float = 1.0):
    """Seconds a step saves when its attention runs `pim_speedup` times faster (processing in
    memory: NeuPIMs, PIM-GPT, from the ratio of in-memory to host bandwidth) and then overlaps
    the GEMMs with `overlap` efficiency: (1 - 1/s) x attention + overlap x min(linear, attention / s)."""
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"--overlap must be in [0, 1], got {overlap}")
    if not pim_speedup >= 1.0:
        raise ValueError(f"--pim-attention-speedup must be at least 1, got {pim_speedup}")
    phases = model_json.get("phases")
    if not phases:
        raise ValueError("--overlap and --pim-attention-speedup need the fused step's phase split, and this "
                         "model's profiles have none (profile with the fused decode step on)")
    linear, attention = (LinearStepModel.from_json(phases[p]).predict for p in PHASES)
    keep = 1.0 / pim_speedup

    def saving(*f) -> float:
        a = attention(*f)
        return (1.0 - keep) * a + overlap * min(linear(*f), keep * a)
    return saving
