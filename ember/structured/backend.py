"""The grammar backend: llguidance, behind three small objects so that it can change.

- `GrammarBackend.compile(params)` -> `CompiledGrammar`, cached by the request's grammar text
  (an LRU, thread-safe: the server compiles on a worker thread before the request reaches the
  engine, and the engine's own `compile` then hits the cache);
- `CompiledGrammar.matcher()` -> a fresh `GrammarMatcher` for one sequence;
- `GrammarMatcher.fill_mask(bitmask, row)` writes the tokens allowed next (one bit per token,
  int32 words), `advance(token)` follows a sampled token, `is_terminated` says the grammar is
  complete and only EOS may follow.

`apply_masks(logits, rows, matchers)` masks the rows of a batch's logits in one operation.

Why llguidance: no Python dependencies (xgrammar declares triton on Linux, which this CPU
project must not pull), a lazily built lexer so that a schema compiles in about a millisecond
and the first mask is cheap, and JSON schema, regex, Lark and GBNF grammars from one library.
It reads the tokenizer from the `tokenizers` JSON Ember already builds: nothing downloads.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

import torch

from ember.structured.params import StructuredOutputsParams

# JSON is generated on one line with the separators models read most (`{"a": 1, "b": 2}`):
# free whitespace lets a small model loop on newlines until max_tokens.
# `oneOf` is read as `anyOf` (pydantic writes discriminated unions as oneOf; their branches are
# disjoint, so the two agree).
JSON_FORMAT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "coerce_one_of": True}


class GrammarError(ValueError):
    """The grammar, schema or regex cannot be compiled; the message says why."""


class GrammarMatcher:
    """One sequence's position in its grammar."""

    def __init__(self, matcher):
        self._m = matcher

    def fill_mask(self, bitmask: torch.Tensor, row: int) -> None:
        v = bitmask[row]
        self._m.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * v.element_size())

    def advance(self, token: int) -> bool:
        """Follow a sampled token; False if the grammar did not allow it (the matcher then
        stays in an error state and is terminated)."""
        return self._m.consume_token(token)

    @property
    def is_terminated(self) -> bool:
        """Nothing but EOS can follow (the grammar is complete, or the matcher failed)."""
        return self._m.is_stopped()

    @property
    def is_accepting(self) -> bool:
        return self._m.is_accepting()

    @property
    def error(self) -> str:
        return self._m.get_error()

    def rollback(self, num_tokens: int) -> None:
        self._m.rollback(num_tokens)


class CompiledGrammar:
    def __init__(self, template, key: str):
        self._template, self.key = template, key

    def matcher(self) -> GrammarMatcher:
        return GrammarMatcher(self._template.deep_copy())


def grammar_text(params: StructuredOutputsParams) -> str:
    """llguidance's grammar for a request (may raise GrammarError for text it cannot read)."""
    import llguidance as llg

    kind = params.kind
    try:
        if kind == "json":
            schema = json.loads(params.json)
            if schema is True:
                schema = {}
            elif not isinstance(schema, dict):
                raise GrammarError(f"a JSON schema is an object (or true), got {params.json[:40]}")
            return llg.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_FORMAT)
        if kind == "json_object":
            return llg.LLMatcher.grammar_from_json_schema('{"type": "object"}', defaults=JSON_FORMAT)
        if kind == "regex":
            return llg.LLMatcher.grammar_from_regex(params.regex)
        if kind == "choice":
            return llg.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in params.choice))
        return llg.grammar_from("grammar", params.grammar)  # Lark, or GBNF converted to Lark
    except GrammarError:
        raise
    except Exception as exc:  # whatever the converters raise, it is the grammar's fault
        raise GrammarError(str(exc) or type(exc).__name__) from None


class GrammarBackend:
    """Compiles grammars for one tokenizer and vocabulary (the model's logits width)."""

    name = "llguidance"

    def __init__(self, tokenizer, vocab_size: int, cache_size: int = 256):
        self.tokenizer, self.vocab_size, self.cache_size = tokenizer, vocab_size, cache_size
        self._ll_tokenizer = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self.hits = self.misses = 0

    @property
    def ll_tokenizer(self):
        """Built on first use (a quarter of a second): engines that never constrain never pay."""
        with self._lock:
            if self._ll_tokenizer is None:
                import llguidance as llg

                tok = self.tokenizer
                eos = sorted(tok.stop_token_ids or ([tok.eos_token_id] if tok.eos_token_id is not None else []))
                self._ll_tokenizer = llg.LLTokenizer(tok.tokenizer.to_str(), n_vocab=self.vocab_size,
                                                     eos_token=eos or None)
            return self._ll_tokenizer

    def compile(self, params: StructuredOutputsParams) -> CompiledGrammar:
        key = params.key
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return hit
        import llguidance as llg

        text = grammar_text(params)
        template = llg.LLMatcher(self.ll_tokenizer, text, log_level=0)  # drops the GIL while it builds
        if template.is_error():
            raise GrammarError(_first_line(template.get_error()))
        compiled = CompiledGrammar(template, key)
        with self._lock:
            self.misses += 1
            self._cache[key] = compiled
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def cached(self, params: StructuredOutputsParams) -> bool:
        with self._lock:
            return params.key in self._cache


def _first_line(message: str) -> str:
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return " ".join(lines[:4]) if lines else "the grammar does not compile"


_BITS = None
_EXECUTOR = None


def fill_masks(bitmask: torch.Tensor, matchers: list[GrammarMatcher]) -> None:
    """Row i of `bitmask` (int32 words, contiguous) <- what matchers[i] allows next. Several
    matchers compute in parallel on llguidance's own threads (as many as torch uses), without the GIL."""
    global _EXECUTOR
    if len(matchers) == 1:
        matchers[0].fill_mask(bitmask, 0)
        return
    if _EXECUTOR is None:
        import llguidance as llg

        _EXECUTOR = llg.LLExecutor(num_threads=max(1, torch.get_num_threads()))
    assert bitmask.is_contiguous() and bitmask.dtype == torch.int32
    _EXECUTOR.unsafe_compute_mask_ptr([(m._m, i) for i, m in enumerate(matchers)], bitmask.data_ptr(),
                                      bitmask.shape[1] * 4, bitmask.shape[0])


def apply_masks(logits: torch.Tensor, rows: list[int], matchers: list[GrammarMatcher]) -> None:
    """Set the logits of tokens each matcher does not allow to -inf, in place (rows of `logits`)."""
    global _BITS
    if not rows:
        return
    vocab = logits.shape[-1]
    words = (vocab + 31) // 32
    bitmask = torch.empty((len(rows), words), dtype=torch.int32)
    fill_masks(bitmask, matchers)
    if _BITS is None:
        _BITS = torch.tensor([1 << b for b in range(32)], dtype=torch.int64).to(torch.int32)  # bit 31: sign bit
    allowed = (bitmask.unsqueeze(-1) & _BITS) != 0  # [rows, words, 32]
    allowed = allowed.view(len(rows), words * 32)[:, :vocab]
    index = torch.tensor(rows)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
