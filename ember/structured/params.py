"""StructuredOutputsParams: what one request's output must match (vLLM's names and fields)."""

from __future__ import annotations

import json as _json
from dataclasses import dataclass
from typing import Any

KINDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Exactly one of:
    - `json`: a JSON schema (a dict, or its JSON text);
    - `regex`: a regular expression (Rust `regex` syntax, anchored at both ends);
    - `choice`: a list of strings, the output is one of them;
    - `grammar`: a Lark grammar (llguidance's dialect) or a GBNF grammar (llama.cpp's);
    - `json_object`: True, any JSON object.
    """
    json: Any = None
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.choice, list):
            object.__setattr__(self, "choice", tuple(self.choice))
        if isinstance(self.json, str):  # keep the schema as text: the cache key and hashable
            try:
                _json.loads(self.json)
            except ValueError as exc:
                raise ValueError(f"json is not valid JSON: {exc}") from None
        elif self.json is not None:
            if not isinstance(self.json, (dict, bool)):
                raise ValueError(f"json must be a JSON schema (an object), got {type(self.json).__name__}")
            object.__setattr__(self, "json", _json.dumps(self.json))
        given = [k for k in KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError("structured outputs take exactly one of json, regex, choice, grammar, json_object; "
                             f"got {', '.join(given) or 'none'}")
        if self.choice is not None:
            if not self.choice or not all(isinstance(c, str) for c in self.choice):
                raise ValueError("choice must be a non-empty list of strings")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string")

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) not in (None, False))

    @property
    def key(self) -> str:
        """The text a compiled grammar is cached under."""
        kind = self.kind
        value = getattr(self, kind)
        if kind == "choice":
            value = _json.dumps(list(value))
        return f"{kind}:{value}"

