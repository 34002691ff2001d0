"""Structured outputs: constrain a sequence's tokens to a JSON schema, a regex, a choice or a grammar.

`params.py` says what a request asks for (vLLM's `StructuredOutputsParams`); `backend.py`
compiles it (once, cached by its text) into a grammar whose per-sequence matcher masks the
logits before sampling and follows each sampled token; `tools.py` builds the tool-calling
grammars and parses the calls back out of the text.
"""

from ember.structured.params import StructuredOutputsParams

__all__ = ["StructuredOutputsParams"]
