"""Per-request text: incremental detokenization and stop strings matched across token boundaries."""

from __future__ import annotations

from ember.loader.tokenizer import EmberTokenizer, IncrementalDetokenizer


class TextState:
    """The text generated so far. `emittable` holds back what could still turn into a stop string."""

    def __init__(self, tokenizer: EmberTokenizer, stop: list[str], skip_special_tokens: bool = True):
        self._detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
        self.stop = stop
        self.text = ""
        self._hold = max((len(s) for s in stop), default=1) - 1
        self.emitted = 0  # characters already handed to a streaming caller

    def add(self, token_id: int) -> str | None:
        """Append a token; returns the stop string if one now appears (the text is cut before it)."""
        delta = self._detok.add(token_id)
        if not delta:
            return None
        start = max(0, len(self.text) - self._hold)
        self.text += delta
        for s in self.stop:
            at = self.text.find(s, start)
            if at != -1:
                self.text = self.text[:at]
                return s
        return None

    def finish(self) -> None:
        """At the end, release bytes held back as an incomplete character."""
        self.text += self._detok.flush()

    def take_delta(self, finished: bool) -> str:
        """New text a stream may show now: all of it once finished, else all but a possible stop prefix."""
        limit = len(self.text) if finished or not self.stop else max(self.emitted, len(self.text) - self._hold)
        delta = self.text[self.emitted:limit]
        self.emitted = limit
        return delta
