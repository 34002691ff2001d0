"""What `add_request` takes as a prompt, turned into token ids and the spans of marked chunks.

Forms: a string; {"prompt": str}; {"prompt_token_ids": [...]} (with optional "chunk_spans":
[[start, end], ...] over those ids); {"documents": [str, ...], "prompt": str}, the documents
first, each a chunk; {"segments": [{"text": str, "chunk": bool}, ...]}. Each chunk is
tokenized on its own, so the same document gives the same tokens (and finds the same cached
KV) wherever it stands.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EncodedPrompt:
    text: str | None
    token_ids: list[int]
    chunk_spans: list[tuple[int, int]] = field(default_factory=list)


def _encode_segments(tokenizer, segments) -> EncodedPrompt:
    if not isinstance(segments, list) or not segments:
        raise ValueError("segments must be a non-empty list of {'text': str, 'chunk': bool}")
    ids, spans, texts = [], [], []
    for i, seg in enumerate(segments):
        if not isinstance(seg, dict) or not isinstance(seg.get("text"), str):
            raise ValueError(f"segments[{i}] must be {{'text': str, 'chunk': bool}}, got {seg!r:.80}")
        chunk = seg.get("chunk", False)
        if not isinstance(chunk, bool):
            raise ValueError(f"segments[{i}].chunk must be true or false, got {chunk!r}")
        piece = tokenizer.encode(seg["text"])
        if chunk and piece:
            spans.append((len(ids), len(ids) + len(piece)))
        ids.extend(piece)
        texts.append(seg["text"])
    return EncodedPrompt("".join(texts), ids, spans)


def check_spans(spans, num_tokens: int) -> list[tuple[int, int]]:
    """Chunk spans as sorted, non-overlapping, non-empty (start, end) pairs inside the prompt."""
    out = []
    for span in spans:
        if (not isinstance(span, (list, tuple)) or len(span) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)):
            raise ValueError(f"a chunk span is [start, end] token indexes, got {span!r}")
        start, end = span
        if not 0 <= start < end <= num_tokens:
            raise ValueError(f"chunk span [{start}, {end}] is not a non-empty range inside the prompt's {num_tokens} tokens")
        if out and start < out[-1][1]:
            raise ValueError(f"chunk span [{start}, {end}] overlaps or precedes the one before it")
        out.append((start, end))
    return out


def encode_prompt(tokenizer, vocab_size: int, prompt) -> EncodedPrompt:
    if isinstance(prompt, str):
        return EncodedPrompt(prompt, tokenizer.encode(prompt))
    if not isinstance(prompt, dict):
        raise ValueError(f"a prompt is a string or a dict (prompt_token_ids, prompt, documents or segments), "
                         f"got {type(prompt).__name__}")
    if "segments" in prompt:
        return _encode_segments(tokenizer, prompt["segments"])
    if "documents" in prompt:
        docs = prompt["documents"]
        if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs):
            raise ValueError("documents must be a list of strings")
        question = prompt.get("prompt", "")
        if not isinstance(question, str):
            raise ValueError("with documents, prompt must be a string")
        return _encode_segments(tokenizer, [{"text": d, "chunk": True} for d in docs] + [{"text": question}])
    if "prompt_token_ids" in prompt:
        ids = list(prompt["prompt_token_ids"])
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt token id {bad[0]!r} is outside the vocabulary [0, {vocab_size})")
        return EncodedPrompt(prompt.get("prompt"), ids, check_spans(prompt.get("chunk_spans") or [], len(ids)))
    if "prompt" in prompt:
        return EncodedPrompt(prompt["prompt"], tokenizer.encode(prompt["prompt"]))
    raise ValueError("a prompt dict needs one of: prompt_token_ids, prompt, documents, segments")
