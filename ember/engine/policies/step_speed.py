"""How long steps take, as policies see it: the time from a step's admission decisions to the
end of its bookkeeping, smoothed over steps. A prompt of T tokens needs ceil(T / budget)
steps at a token budget per step; while decodes share those steps their cost is in the
measured step time already."""

from __future__ import annotations

import math
from typing import Callable

EMA = 0.2  # weight of the newest step


class StepSpeed:
    def __init__(self):
        self.step_seconds = 0.0  # 0 until a step was measured
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
        if start is None or not scheduled or self._clock is None:
            return
        sample = self._clock() - start
        self.step_seconds = sample if not self.step_seconds else (1 - EMA) * self.step_seconds + EMA * sample

    def seconds_for(self, tokens: int, budget: int) -> float:
        """Time to compute `tokens` prompt tokens at `budget` tokens a step."""
        return math.ceil(tokens / max(budget, 1)) * self.step_seconds
