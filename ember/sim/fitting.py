"""The fits a calibration compares: non-negative least squares for the linear formula (pooled, or
per step kind), and a regression tree (CART) for the learned one. numpy only: no scipy or
scikit-learn here.

Both fit relative error (what the held-out MAPE measures): the linear rows are divided by the
measured time, and the tree splits and averages log step times.
"""

from __future__ import annotations

import itertools

import numpy as np

from ember.sim.step_model import LinearStepModel, SplitLinearStepModel, TreeStepModel

MIN_REGIME_ROWS = 5  # fewer steps of a kind than this: that kind shares the pooled formula


def fit_nonnegative_linear(X: np.ndarray, y: np.ndarray) -> LinearStepModel:
    """Intercept + coefficients >= 0 minimising sum(((pred - y) / y)^2).

    Exact NNLS by trying every set of free terms (2^5 = 32 small solves): the optimum is the
    best unconstrained solution, on some subset of terms, whose coefficients are all >= 0.
    """
    A = np.hstack([np.ones((len(y), 1)), X.astype(np.float64)]) / y[:, None]
    target = np.ones(len(y))
    best, best_err = np.zeros(A.shape[1]), float(np.sum(target ** 2))  # all-zero is always feasible
    for k in range(1, A.shape[1] + 1):
        for cols in itertools.combinations(range(A.shape[1]), k):
            sub = A[:, cols]
            if np.linalg.matrix_rank(sub) < k:
                continue  # a term that never varies (e.g. no prefill rows) adds nothing
            coef, *_ = np.linalg.lstsq(sub, target, rcond=None)
            if np.any(coef < 0):
                continue
            err = float(np.sum((sub @ coef - target) ** 2))
            if err < best_err - 1e-12 * max(best_err, 1.0):
                full = np.zeros(A.shape[1])
                full[list(cols)] = coef
                best, best_err = full, err
    return LinearStepModel(best[0], best[1:].tolist())


def fit_split_linear(X: np.ndarray, y: np.ndarray) -> SplitLinearStepModel:
    """`fit_nonnegative_linear` on the decode-only steps and on the steps with prompt tokens apart."""
    with_prefill = X[:, 0] > 0
    pooled = None
    parts = []
    for rows in (~with_prefill, with_prefill):
        if rows.sum() >= MIN_REGIME_ROWS:
            parts.append(fit_nonnegative_linear(X[rows], y[rows]))
        else:
            pooled = pooled or fit_nonnegative_linear(X, y)
            parts.append(pooled)
    return SplitLinearStepModel(*parts)


def fit_tree(X: np.ndarray, y: np.ndarray, max_depth: int = 10, min_leaf: int = 4) -> TreeStepModel:
    """A CART regression tree on log(y): each split the one that most lowers the squared error."""
    logy = np.log(y)
    feature, threshold, left, right, value = [], [], [], [], []

    def grow(idx: np.ndarray, depth: int) -> int:
        node = len(feature)
        feature.append(-1)
        threshold.append(0.0)
        left.append(-1)
        right.append(-1)
        value.append(float(np.exp(logy[idx].mean())))
        split = None if depth >= max_depth or len(idx) < 2 * min_leaf else _best_split(X[idx], logy[idx], min_leaf)
        if split is None:
            return node
        f, t = split
        below = X[idx, f] <= t
        feature[node], threshold[node] = f, t
        left[node] = grow(idx[below], depth + 1)
        right[node] = grow(idx[~below], depth + 1)
        return node

    grow(np.arange(len(y)), 0)
    return TreeStepModel(feature, threshold, left, right, value)


def _best_split(X: np.ndarray, y: np.ndarray, min_leaf: int) -> tuple[int, float] | None:
    n = len(y)
    best, best_sse = None, float(np.sum((y - y.mean()) ** 2)) * (1 - 1e-9)
    for f in range(X.shape[1]):
        order = np.argsort(X[:, f], kind="stable")
        xs, ys = X[order, f], y[order]
        csum, csq = np.cumsum(ys), np.cumsum(ys ** 2)
        k = np.arange(min_leaf, n - min_leaf + 1)  # rows on the left
        k = k[xs[k - 1] < xs[np.minimum(k, n - 1)]]  # only between distinct values
        if not len(k):
            continue
        left_sum, left_sq = csum[k - 1], csq[k - 1]
        right_sum, right_sq = csum[-1] - left_sum, csq[-1] - left_sq
        sse = (left_sq - left_sum ** 2 / k) + (right_sq - right_sum ** 2 / (n - k))
        j = int(np.argmin(sse))
        if sse[j] < best_sse:
            best_sse = float(sse[j])
            best = (f, float((xs[k[j] - 1] + xs[k[j]]) / 2))
    return best


def mape(model, X: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute percentage error of `model` on rows X with measured times y."""
    pred = np.array([model.predict(*map(int, row)) for row in X])
    return float(np.mean(np.abs(pred - y) / y) * 100.0)
