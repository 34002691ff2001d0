"""Prompt text: real English sentences from `pydoc_data.topics`, cut to exact token counts.

The sentences come from the documentation every Python carries, split at sentence ends. A prompt
of N tokens starts at a (seeded) sentence, runs on through the following sentences, and is cut at
N tokens of the model's own tokenizer; the cut is re-encoded and shortened until it encodes to at
most N tokens (BPE may merge across the cut), so `input_len` is what the text really encodes to.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")


@lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    out = []
    for doc in topics.values():
        flat = " ".join(doc.split())  # the docs are hard-wrapped; prompts read as running text
        out.extend(s for s in _SENTENCE_END.split(flat) if len(s) > 1)
    return tuple(out)


def load_tokenizer(path: str | None = None):
    """The tokenizer of a GGUF file or Hugging Face directory (default: the default model's), without loading weights."""
    from ember.loader import resolve_model_path

    return _load_tokenizer(resolve_model_path(path))


@lru_cache(maxsize=4)  # reading a GGUF's vocabulary takes seconds; tokenizers are only read from
def _load_tokenizer(path: str):
    import os

    from ember.loader import ModelLoadError
    from ember.loader.tokenizer import EmberTokenizer

    if os.path.isdir(path):
        return EmberTokenizer.from_dir(path)
    from ember.loader.gguf import GGUFFile

    try:
        return EmberTokenizer.from_gguf_metadata(GGUFFile(path).metadata)
    except ModelLoadError:
        raise
    except Exception as exc:  # a file that is not GGUF: say so, no traceback
        raise ModelLoadError(f"cannot read a tokenizer from {path}: {exc}") from exc


class PromptMaker:
    """Cuts the corpus into prompts of given token lengths; one seeded generator per workload."""

    def __init__(self, tokenizer, seed: int = 0):
        self.tok = tokenizer
        self.rng = np.random.default_rng(seed)
        self.sents = sentences()

    def text(self, num_tokens: int) -> tuple[str, int]:
        """A prompt of about `num_tokens` tokens (never more) starting at a random sentence, and its real length."""
        if num_tokens <= 0:
            return "", 0
        i = int(self.rng.integers(len(self.sents)))
        parts: list[str] = []
        approx = 0
        while approx < num_tokens + 8:  # ~4 characters a token; re-encoded below, so this is only a bound
            parts.append(self.sents[i % len(self.sents)])
            approx += len(parts[-1]) // 5 + 1  # English runs ~4.3 characters a token: err on the long side
            i += 1
        ids = self.tok.encode(" ".join(parts), add_bos=False)
        while len(ids) < num_tokens:  # a run of very short tokens: take more sentences
            parts.extend(self.sents[(i + k) % len(self.sents)] for k in range(8))
            i += 8
            ids = self.tok.encode(" ".join(parts), add_bos=False)
        cut = num_tokens
        while True:
            text = self.tok.decode(ids[:cut])
            n = len(self.tok.encode(text, add_bos=False))
            if n <= num_tokens or cut <= 1:
                return text, n
            cut -= n - num_tokens

    def token_ids(self, num_tokens: int) -> list[int]:
        """Exactly `num_tokens` token ids of English text (for in-process runs that take ids)."""
        text, _ = self.text(num_tokens + 4)
        ids = self.tok.encode(text, add_bos=False)
        while len(ids) < num_tokens:  # rare: the cut text re-encoded shorter; extend with more text
            more, _ = self.text(num_tokens)
            ids += self.tok.encode(" " + more, add_bos=False)
        return ids[:num_tokens]
