"""Perplexity over fixed, non-overlapping windows of a text (the recipe behind `ember eval ppl`).

The recipe, as measured for the peers in shared/anchors/baseline-cpu.md: tokenize the text
without BOS, cut the first `max_tokens` tokens into non-overlapping windows of `context` tokens
(the ragged tail is dropped), run each window from scratch without a cache, and score the
next-token predictions inside each window:

- `"all"`: the logits at positions 0..context-2 predicting tokens 1..context-1
  (transformers' usual scoring; 511 predictions per 512-token window).
- `"second-half"`: the logits at positions context//2..context-2 only, predicting tokens
  context//2+1..context-1 (llama.cpp's llama-perplexity: every scored token has at least half
  a window of context; 255 predictions per 512-token window).

The scoring core, `token_nll` (eval/nll.py), takes hidden states and target ids and knows
nothing about windows, so a teacher-forced decode through a (compressed) KV cache
(eval/decode_nll.py) scores its steps with exactly the same arithmetic.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from ember.eval.decode_nll import decode_window_nll
from ember.eval.nll import LOGIT_CHUNK_ROWS, token_nll
from ember.kernels.attention import AttentionMetadata

SCORE_MODES = ("all", "second-half")


def default_eval_text() -> str:
    """The English text every Python carries: the pydoc topics, joined with blank lines.

    It differs between CPython versions; the anchors were measured on CPython 3.11.7.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics.values())


def load_eval_text(path: str | None) -> str:
    """The text of a UTF-8 file, or the default evaluation text when `path` is None."""
    if not path:
        return default_eval_text()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"--text: cannot read {path}: {exc.strerror}") from None


def calibration_windows(tokenizer, text: str, tokens: int, context: int = 512) -> tuple[torch.Tensor, int]:
    """Calibration tokens for a calibrated quantizer (quant/gptq.py): the last `tokens` of the
    text (rounded down to whole windows of `context`, at least one) as windows [B, context],
    and the index of their first token. `evaluate_perplexity` never scores from that index on
    in a model calibrated on the same text (`scored_tokens`), so the two stay apart."""
    ids = tokenizer.encode(text, add_bos=False)
    n = max(tokens // context, 1) * context
    if n > len(ids) // 2:
        raise ValueError(f"{n} calibration tokens would take more than half of the text's {len(ids)}")
    start = len(ids) - n
    return torch.tensor(ids[start:], dtype=torch.long).view(-1, context), start


def calibration_record(text: str, start: int) -> dict:
    """What a calibrated model carries (`model.calibration`) so the scorer can keep clear of it."""
    return {"text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "first_token": start}


def scored_tokens(num_ids: int, max_tokens: int | None, text: str, model=None) -> int:
    """How many leading tokens of the text the windows may take: all, max_tokens, and never a
    token of the calibration span of a model calibrated on this text."""
    usable = num_ids if max_tokens is None else min(num_ids, max_tokens)
    cal = getattr(model, "calibration", None)
    if cal and cal["text_sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest():
        usable = min(usable, cal["first_token"])
    return usable


@dataclass
class PerplexityResult:
    perplexity: float
    nll_sum: float  # natural-log NLL summed over the scored predictions
    tokens_scored: int
    windows: int
    context: int
    score: str
    text_sha256: str
    tokens_total: int  # tokens in the whole text, before windowing
    seconds: float

    def to_json(self) -> dict:
        return asdict(self)


def first_scored_position(context: int, score: str) -> int:
    """The first logit position inside a window whose prediction counts (the last is context-2)."""
    if score == "all":
        return 0
    if score == "second-half":
        return context // 2
    raise ValueError(f"unknown score mode {score!r}; expected one of {', '.join(SCORE_MODES)}")


@torch.inference_mode()
def window_nll(model, windows: torch.Tensor, first: int = 0,
               chunk_rows: int = LOGIT_CHUNK_ROWS) -> torch.Tensor:
    """NLL [B, C-1-first] of each window's predictions from logit positions first..C-2.

    windows: [B, C] token ids. All B windows run in one forward as a flat varlen batch, each
    causal on its own with positions from 0, without a cache.
    """
    num, context = windows.shape
    positions = torch.arange(context).repeat(num)
    hidden = model(windows.reshape(-1), positions, AttentionMetadata.no_cache([context] * num))
    # Only the scored positions reach the (large) output projection.
    hidden = hidden.view(num, context, -1)[:, first:context - 1].reshape(-1, hidden.shape[-1])
    targets = windows[:, first + 1:].reshape(-1)
    return token_nll(model, hidden, targets, chunk_rows).view(num, context - 1 - first)


def evaluate_perplexity(model, tokenizer, text: str, context: int = 512, max_tokens: int | None = None,
                        score: str = "all", windows_per_batch: int = 4, progress: bool = True,
                        decode: bool = False, fused_decode: bool = True, attention=None,
                        kv_cache_dtype: str = "auto", block_size: int = 16) -> PerplexityResult:
    """Perplexity of `model` over `text` by the windowed recipe in this module's docstring.
    decode: feed each window one token per step through the KV cache (eval/decode_nll.py)
    instead of one forward per window; fused_decode: let those steps take the fused C step;
    attention: the backend of those steps (default: the model's); kv_cache_dtype: the KV codec
    of those steps' cache (a prefill-mode window runs without a cache, so it only applies to decode);
    block_size: that cache's tokens per block."""
    started = time.perf_counter()
    if context < 2:
        raise ValueError(f"context must be at least 2 tokens (one prediction), got {context}")
    first = first_scored_position(context, score)  # validates `score`
    if first > context - 2:
        raise ValueError(f"score {score!r} scores no prediction in a window of {context} tokens; use a longer context")
    max_position = model.cfg.max_position
    if context > max_position:
        raise ValueError(f"context {context} is beyond the model's maximum of {max_position} positions")
    if kv_cache_dtype != "auto" and not decode:
        raise ValueError(f"kv_cache_dtype {kv_cache_dtype!r} needs decode mode: prefill windows run without a KV cache")
    if windows_per_batch < 1:
        raise ValueError(f"windows_per_batch must be at least 1, got {windows_per_batch}")
    if max_tokens is not None and max_tokens < context:
        raise ValueError(f"max_tokens={max_tokens} is less than one window of context={context}")

    ids = tokenizer.encode(text, add_bos=False)
    usable = scored_tokens(len(ids), max_tokens, text, model)
    num_windows = usable // context
    if num_windows == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of context={context}")
    windows = torch.tensor(ids[:num_windows * context], dtype=torch.long).view(num_windows, context)

    # Summed in float64: 65k fp32 terms would otherwise lose digits the comparison needs.
    nll_sum, scored = 0.0, 0
    with tqdm(total=num_windows, desc=f"perplexity (ctx {context}, {score}{', decode' if decode else ''})",
              unit="window", disable=not progress) as bar:
        for start in range(0, num_windows, windows_per_batch):
            batch = windows[start:start + windows_per_batch]
            nll = decode_window_nll(model, batch, first, fused_decode, attention, kv_cache_dtype, block_size) if decode else window_nll(model, batch, first)
            nll_sum += float(nll.double().sum())
            scored += nll.numel()
            bar.update(nll.shape[0])

    return PerplexityResult(
        perplexity=math.exp(nll_sum / scored), nll_sum=nll_sum, tokens_scored=scored, windows=num_windows,
        context=context, score=score, text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        tokens_total=len(ids), seconds=time.perf_counter() - started,
    )
