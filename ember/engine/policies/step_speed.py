"""Prefill speed as policies see it: a step's time (from its admission decisions to the end
of its bookkeeping) over the tokens it computed, smoothed over steps."""

from __future__ import annotations

from typing import Callable

EMA = 0.2  # weight of the newest step


class StepSpeed:
    def __init__(self):
        self.seconds_per_token = 0.0  # 0 until a step was measured
        self._clock: Callable[[], float] | None = None
        self._start: float | None = None

    def start(self, clock: Callable[[], float]) -> float:
        """Called from `Policy.order` (once a step); returns the time now."""
        self._clock, self._start = clock, clock()
        return self._start

    def now(self) -> float:
        return self._clock() if self._clock is not None else 0.0

    def observe(self, scheduled) -> None:
        """Called from `Policy.on_step` with the step's (request, tokens)."""
        start, self._start = self._start, None
        tokens = sum(n for _, n in scheduled)
        if start is None or not tokens or self._clock is None:
            return
        sample = (self._clock() - start) / tokens
        self.seconds_per_token = sample if not self.seconds_per_token else (
            (1 - EMA) * self.seconds_per_token + EMA * sample)
