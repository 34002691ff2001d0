"""Accuracy evaluation: perplexity over a text (and, later, teacher-forced decode through a KV cache)."""

from ember.eval.nll import token_nll
from ember.eval.perplexity import (
    SCORE_MODES,
    PerplexityResult,
    default_eval_text,
    evaluate_perplexity,
    window_nll,
)

__all__ = ["SCORE_MODES", "PerplexityResult", "default_eval_text", "evaluate_perplexity", "token_nll", "window_nll"]
