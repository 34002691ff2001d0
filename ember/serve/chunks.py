"""Marking reusable chunks (documents) in requests, and precomputing them (POST /v1/chunks).

On chat, a text content part marked `"cache_control": {"type": "chunk"}` is a chunk; on
completions, the extra field `documents` lists chunks placed before the prompt. Each chunk
is tokenized on its own, so its KV is found in the chunk cache wherever it stands
(kv/chunks.py). Anthropic's `{"type": "ephemeral"}` is accepted and changes nothing: the
prefix cache is always on. A chat part is replaced by a marker while the template renders,
and the rendered text is cut at the markers; the marker carries a per-request nonce so no
user text can forge one.
"""

from __future__ import annotations

import re
import secrets

from pydantic import BaseModel, ConfigDict, Field

from ember.serve.errors import OpenAIError, bad_request

CACHE_CONTROL_TYPES = ("chunk", "ephemeral")


class ChunkMarks:
    def __init__(self):
        self.nonce = secrets.token_hex(6)
        self.texts: list[str] = []
        self.pattern = re.compile(f"\ue000{self.nonce}:(\\d+)\ue001")

    def mark(self, text: str) -> str:
        self.texts.append(text)
        return f"\ue000{self.nonce}:{len(self.texts) - 1}\ue001"

    def encode(self, tokenizer, rendered: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of a rendered prompt with its marked chunks, and the chunks' spans."""
        ids, spans, at, seen = [], [], 0, []
        for m in self.pattern.finditer(rendered):
            ids += tokenizer.encode(rendered[at:m.start()], add_bos=False)
            piece = tokenizer.encode(self.texts[int(m.group(1))], add_bos=False)
            if piece:
                spans.append((len(ids), len(ids) + len(piece)))
            ids += piece
            seen.append(int(m.group(1)))
            at = m.end()
        ids += tokenizer.encode(rendered[at:], add_bos=False)
        if sorted(seen) != list(range(len(self.texts))):
            raise bad_request("the chat template did not render every content part marked as a chunk once",
                              param="messages")
        return ids, spans


def part_text(part, where: str, marks: ChunkMarks | None) -> str:
    """A text part's text, or the marker standing for it when it is marked as a chunk."""
    control = part.cache_control
    if control is None:
        return part.text
    kind = control.get("type") if isinstance(control, dict) else None
    if kind not in CACHE_CONTROL_TYPES:
        raise bad_request(f"{where}.cache_control.type must be one of: {', '.join(CACHE_CONTROL_TYPES)}",
                          param=f"{where}.cache_control")
    if kind == "ephemeral" or marks is None:
        return part.text
    return marks.mark(part.text)


def with_documents(tokenizer, documents: list[str] | None, ids: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """Completions: the documents' tokens, each a chunk, before the prompt's."""
    if not documents:
        return ids, []
    out, spans = [], []
    for i, doc in enumerate(documents):
        piece = tokenizer.encode(doc, add_bos=False)
        if not piece:
            raise bad_request(f"documents[{i}] must not be empty", param="documents")
        spans.append((len(out), len(out) + len(piece)))
        out += piece
    return out + ids, spans


class WarmChunksRequest(BaseModel):
    """POST /v1/chunks: documents to compute into the chunk cache before queries cite them."""
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    documents: list[str] = Field(..., min_length=1, max_length=256)


async def handle_warm(served, body: WarmChunksRequest) -> dict:
    """Precompute (sleep-time compute): what it cost, and what was already cached."""
    served.model_name(body.model)
    served.admit()
    for i, doc in enumerate(body.documents):
        if not doc:
            raise bad_request(f"documents[{i}] must not be empty", param="documents")
    try:
        report = await served.engine.run_in_engine(lambda engine: engine.warm_chunks(body.documents))
    except ValueError as exc:  # the cache is off, or the documents don't fit
        raise OpenAIError(400, str(exc), param="documents", code="chunk_cache_unavailable")
    return {"object": "chunks.warm", **report}
