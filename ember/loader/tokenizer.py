"""Tokenizer: a `tokenizers.Tokenizer` built from GGUF metadata or read from tokenizer.json.

The GGUF build mirrors what Hugging Face transformers builds from the same file (byte-level
BPE with GPT-2's split, or a named split regex for the vocabularies that declare one), so the
ids match theirs token for token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from ember.loader.errors import ModelLoadError

# llama.cpp token types
_CONTROL, _USER_DEFINED = 3, 4

# Split regexes for vocabularies whose GGUF `tokenizer.ggml.pre` names one other than GPT-2's.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_BY_PRE = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


@dataclass
class EmberTokenizer:
    tokenizer: Tokenizer
    bos_token_id: int | None
    eos_token_id: int | None
    add_bos: bool = False
    chat_template: str | None = None
    # Tokens that end generation besides EOS (e.g. <|eot_id|>), from the vocabulary's control tokens.
    stop_token_ids: set[int] = field(default_factory=set)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_gguf_metadata(cls, meta: dict) -> "EmberTokenizer":
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ModelLoadError(
                f"GGUF tokenizer model {kind!r} is not supported yet; supported: 'gpt2' (byte-level BPE)"
            )
        tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
        types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
        alphabet = set(byte_alphabet().values())
        spell = byte_alphabet()
        vocab = {}
        for index, token in enumerate(tokens):
            if not set(token) <= alphabet:  # a token written in plain text: respell it in bytes
                token = "".join(spell[b] for b in token.encode("utf-8"))
            vocab.setdefault(token, index)
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        split = SPLIT_BY_PRE.get(meta.get("tokenizer.ggml.pre"))
        if split is None:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Split(Regex(split), behavior="isolated"),
                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
            )
        tok.decoder = decoders.ByteLevel()
        # Control tokens stay whole and are special; a control token outside the byte alphabet
        # is a converter mislabel and is skipped (as transformers does).
        control = [AddedToken(t, special=True, normalized=False)
                   for t, ty in zip(tokens, types) if ty == _CONTROL and set(t) <= alphabet]
        tok.add_special_tokens(control)
        user = [AddedToken(t, special=False, normalized=False)
                for t, ty in zip(tokens, types) if ty == _USER_DEFINED and t in vocab]
        if user:
            tok.add_tokens(user)
        bos = meta.get("tokenizer.ggml.bos_token_id")
        eos = meta.get("tokenizer.ggml.eos_token_id")
        stops = {tokens.index(t) for t in ("<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "<|endoftext|>") if t in vocab and t in tokens}
        return cls(
            tokenizer=tok,
            bos_token_id=None if bos is None else int(bos),
            eos_token_id=None if eos is None else int(eos),
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
            chat_template=meta.get("tokenizer.chat_template"),
            stop_token_ids=stops | ({int(eos)} if eos is not None else set()),
        )

    @classmethod
    def from_dir(cls, path: str) -> "EmberTokenizer":
        tj = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tj):
            raise ModelLoadError(f"no tokenizer.json in model directory {path}")
        tok = Tokenizer.from_file(tj)
        cfg = _read_json(os.path.join(path, "tokenizer_config.json"))
        gen = _read_json(os.path.join(path, "generation_config.json"))
        model_cfg = _read_json(os.path.join(path, "config.json"))

        def token_id(value) -> int | None:
            if isinstance(value, dict):
                value = value.get("content")
            return tok.token_to_id(value) if isinstance(value, str) else None

        bos = token_id(cfg.get("bos_token"))
        eos = token_id(cfg.get("eos_token"))
        if eos is None:
            eos = model_cfg.get("eos_token_id")
            eos = eos[0] if isinstance(eos, list) else eos
        stops = set()
        for source in (gen.get("eos_token_id"), model_cfg.get("eos_token_id"), eos):
            for value in source if isinstance(source, list) else [source]:
                if isinstance(value, int):
                    stops.add(value)
        template = cfg.get("chat_template")
        if template is None and os.path.isfile(os.path.join(path, "chat_template.jinja")):
            with open(os.path.join(path, "chat_template.jinja"), encoding="utf-8") as f:
                template = f.read()
        return cls(tok, bos, eos, add_bos=bool(cfg.get("add_bos_token", False)) and bos is not None,
                   chat_template=template if isinstance(template, str) else None, stop_token_ids=stops)

    # --- use ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids; special tokens written in the text are recognised (chat templates need it)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_token_id is not None:
            if not ids or ids[0] != self.bos_token_id:
                ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        return self.decode([token_id], skip_special_tokens=False)

    def token_str(self, token_id: int) -> str | None:
        return self.tokenizer.id_to_token(token_id)

    def detokenizer(self) -> "IncrementalDetokenizer":
        return IncrementalDetokenizer(self)


class IncrementalDetokenizer:
    """Text deltas for a growing list of token ids, holding back incomplete UTF-8 sequences.

    Decoding token by token breaks multi-byte characters and byte-level spacing; instead we
    decode a short window of recent tokens and emit only what it adds to the text so far.
    """

    def __init__(self, tokenizer: EmberTokenizer, skip_special_tokens: bool = True):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # tokens already turned into emitted text

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the end of generation)."""
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return after[len(before):] if len(after) > len(before) else ""


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)
