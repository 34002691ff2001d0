"""Step-time models: seconds one engine step takes, from what the step computed.

Three kinds, read from and written to model JSON (see calibrate.py):
- `linear`: a + b*prefill_tokens + c*decode_rows + d*context_len_sum + e*num_seqs
  + f*prefill_attention with every coefficient >= 0 (DistServe's fitted formula, with the
  profile's columns as its terms: its prefill formula's squared-length term is
  prefill_attention, the query-key pairs of the prompt chunks);
- `split-linear`: one such formula for decode-only steps and one for steps with prompt tokens
  (DistServe, too, fits prefill and decode apart);
- `tree`: a regression tree over the same features (Vidur learns per-operator times with random
  forests; one tree is its smallest form), leaves hold the geometric mean step time.
`predict(prefill, decode, context, seqs, attention=0)` is called once per simulated step, so it is
plain Python. A model fitted before prefill_attention was a column (a JSON without its
coefficient, an older tree) reads it as 0.
"""

from __future__ import annotations

import math

FEATURES = ("prefill_tokens", "decode_rows", "context_len_sum", "num_seqs", "prefill_attention")
LATER_FEATURES = ("prefill_attention",)  # profiles and models made before it was a column lack it
KINDS = ("linear", "split-linear", "tree")


class LinearStepModel:
    kind = "linear"

    def __init__(self, intercept: float, coefficients: list[float]):
        if len(coefficients) != len(FEATURES):
            raise ValueError(f"a linear step model has {len(FEATURES)} coefficients ({', '.join(FEATURES)}), "
                             f"got {len(coefficients)}")
        self.intercept, self.coefficients = float(intercept), [float(c) for c in coefficients]

    def predict(self, prefill: int, decode: int, context: int, seqs: int, attention: int = 0) -> float:
        b, c, d, e, f = self.coefficients
        return self.intercept + b * prefill + c * decode + d * context + e * seqs + f * attention

    def to_json(self) -> dict:
        return {"intercept": self.intercept, "coefficients": dict(zip(FEATURES, self.coefficients))}

    @classmethod
    def from_json(cls, d: dict) -> LinearStepModel:
        coef = d["coefficients"]
        return cls(d["intercept"], [coef.get(f, 0.0) if f in LATER_FEATURES else coef[f] for f in FEATURES])


class SplitLinearStepModel:
    """One linear formula for decode-only steps and one for steps with prompt tokens: the engine
    runs them down different paths (the fused C decode step; the PyTorch path for prefill rows),
    so their costs need not share coefficients."""
    kind = "split-linear"

    def __init__(self, decode_only: LinearStepModel, with_prefill: LinearStepModel):
        self.decode_only, self.with_prefill = decode_only, with_prefill

    def predict(self, prefill: int, decode: int, context: int, seqs: int, attention: int = 0) -> float:
        return (self.with_prefill if prefill else self.decode_only).predict(prefill, decode, context, seqs, attention)

    def to_json(self) -> dict:
        return {"decode_only": self.decode_only.to_json(), "with_prefill": self.with_prefill.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> SplitLinearStepModel:
        return cls(LinearStepModel.from_json(d["decode_only"]), LinearStepModel.from_json(d["with_prefill"]))


class TreeStepModel:
    """A binary tree in flat lists: node i splits on FEATURES[feature[i]] <= threshold[i]
    (left) or > (right); feature -1 marks a leaf whose value is the prediction."""
    kind = "tree"

    def __init__(self, feature: list[int], threshold: list[float], left: list[int], right: list[int],
                 value: list[float]):
        n = len(feature)
        if not n or any(len(x) != n for x in (threshold, left, right, value)):
            raise ValueError("a tree step model needs equal, non-empty node lists")
        self.feature, self.threshold, self.left, self.right, self.value = feature, threshold, left, right, value

    def predict(self, prefill: int, decode: int, context: int, seqs: int, attention: int = 0) -> float:
        x = (prefill, decode, context, seqs, attention)
        i, feature = 0, self.feature
        while feature[i] >= 0:
            i = self.left[i] if x[feature[i]] <= self.threshold[i] else self.right[i]
        return self.value[i]

    @property
    def num_leaves(self) -> int:
        return sum(1 for f in self.feature if f < 0)

    def to_json(self) -> dict:
        return {"nodes": {"feature": self.feature, "threshold": self.threshold, "left": self.left,
                          "right": self.right, "value": self.value}}

    @classmethod
    def from_json(cls, d: dict) -> TreeStepModel:
        n = d["nodes"]
        return cls(list(n["feature"]), list(n["threshold"]), list(n["left"]), list(n["right"]), list(n["value"]))


def model_from_json(d: dict) -> LinearStepModel | SplitLinearStepModel | TreeStepModel:
    """The model a calibration JSON holds; a ValueError that says what is wrong otherwise."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind not in KINDS:
        raise ValueError(f"not a step-time model: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    makers = {"linear": LinearStepModel, "split-linear": SplitLinearStepModel, "tree": TreeStepModel}
    try:
        model = makers[kind].from_json(d)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the {kind} step-time model is incomplete: missing {exc}") from None
    if not all(map(math.isfinite, [model.predict(0, 0, 0, 0)])):
        raise ValueError("the step-time model predicts a non-finite time")
    return model
