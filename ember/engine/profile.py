"""Step profiles: where each engine step's time went and what the step computed, one CSV row per step.

This is the data a step-time model (a simulator) is calibrated from, so it is an engine output,
not a benchmark's patch. It must stay cheap: while profiling is off the step gets `NO_CLOCK`,
whose marks do nothing; while on, a step costs a few `perf_counter()` calls, one short loop
over the scheduled rows (not over tokens) and one formatted line.

The step marks phases on a `StepClock` as it goes; each mark charges the time since the
previous mark to its phase, so the phases tile the step in whatever order the step runs them
(`step_s` minus their sum is what no mark covers). Columns (times in seconds):

  step             index of the step since profiling was enabled
  wall_start       when the step began, Unix time
  step_s           the whole step
  schedule_s       Scheduler.schedule
  prepare_s        block copies (copy-on-write) and the batch turned into tensors
  forward_s        the model's forward (the fused C step and/or the PyTorch path)
  fused_linear_s, fused_attention_s, fused_other_s
                   the fused C step's own phase timers (NativeDecoder.PHASES), part of
                   forward_s; empty when the fused step did not run in this step
  logits_s         the LM head on the rows that sample (and prompt-logprob rows)
  sample_s         the sampler
  update_s         bookkeeping after the forward: prompt logprobs, then Scheduler.update
                   (computed tokens, full blocks cached, forks, appended tokens, stop
                   checks, finishing requests) less its detokenization
  detokenize_s     detokenizing the new tokens and matching stop strings
  num_seqs         sequences in the batch
  prefill_tokens   tokens of rows that are not decode rows (prompt chunks, recomputation)
  decode_rows      rows feeding one generated token (one new token past the prompt)
  context_len_sum  sum over rows of the KV entries each attends to (held + this step's; fewer
                   than its positions once entries were dropped from the cache)
  prefill_attention query-key pairs of the rows that are not decode rows: a chunk of n tokens
                   after h held entries attends n*h + n(n+1)/2 (causal), so a long prompt's
                   attention, which grows with its square, has a term of its own (DistServe's
                   prefill formula has one)
  kv_blocks_used   KV blocks held after scheduling
  preempted        sequences preempted while scheduling this step
  waiting          sequences left waiting after scheduling
(prefill_attention is last, after the columns older profiles have.)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

PHASES = ("schedule", "prepare", "forward", "logits", "sample", "update", "detokenize")
FUSED_PHASES = ("fused_linear", "fused_attention", "fused_other")  # NativeDecoder.PHASES, in its order
COMPOSITION = ("num_seqs", "prefill_tokens", "decode_rows", "context_len_sum", "kv_blocks_used", "preempted",
               "waiting", "prefill_attention")
COLUMNS = (("step", "wall_start", "step_s") + tuple(p + "_s" for p in PHASES[:3]) +
           tuple(p + "_s" for p in FUSED_PHASES) + tuple(p + "_s" for p in PHASES[3:]) + COMPOSITION)
FLUSH_EVERY_S = 1.0  # a crashed run loses at most about this much of its profile


@dataclass(slots=True)
class StepRecord:
    step: int
    wall_start: float  # Unix time
    seconds: float  # the whole step
    phases: dict[str, float]  # PHASES -> seconds
    fused: list[float] | None  # FUSED_PHASES -> seconds, None when the fused step did not run
    num_seqs: int
    prefill_tokens: int
    decode_rows: int
    context_len_sum: int
    kv_blocks_used: int
    preempted: int
    waiting: int
    prefill_attention: int

    def csv_line(self) -> str:
        p = self.phases
        fused = ("%.7f,%.7f,%.7f" % tuple(self.fused)) if self.fused is not None else ",,"
        return (f"{self.step},{self.wall_start:.6f},{self.seconds:.7f},{p['schedule']:.7f},{p['prepare']:.7f},"
                f"{p['forward']:.7f},{fused},{p['logits']:.7f},{p['sample']:.7f},{p['update']:.7f},"
                f"{p['detokenize']:.7f},{self.num_seqs},{self.prefill_tokens},{self.decode_rows},"
                f"{self.context_len_sum},{self.kv_blocks_used},{self.preempted},{self.waiting},"
                f"{self.prefill_attention}\n")


def batch_composition(batch) -> tuple[int, int, int, int, int]:
    """(num_seqs, prefill_tokens, decode_rows, context_len_sum, prefill_attention) of a scheduled
    batch, read before the step changes its requests: the step-time features (a simulator computes
    them here too)."""
    prefill = decode = context = pairs = 0
    for request, n in batch.scheduled:
        start = request.num_computed_tokens  # a position: decode rows are past the prompt
        held = start - request.num_dropped_tokens  # cache entries: fewer after drops
        context += held + n
        if n == 1 and start >= len(request.prompt_token_ids):
            decode += 1
        else:
            prefill += n
            pairs += n * held + n * (n + 1) // 2
    return len(batch.scheduled), prefill, decode, context, pairs


class NullClock:
    """The clock of a step nobody profiles: every mark is a no-op."""

    __slots__ = ()

    def mark(self, phase: str) -> None:
        pass

    def scheduled(self, batch, scheduler) -> None:
        pass


NO_CLOCK = NullClock()


class StepClock:
    """The marks of one profiled step, and what its batch holds."""

    __slots__ = ("start", "last", "phases", "composition")

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.phases = dict.fromkeys(PHASES, 0.0)
        self.composition: tuple | None = None

    def mark(self, phase: str) -> None:
        """Charge the time since the previous mark to `phase` (a name of PHASES)."""
        now = time.perf_counter()
        self.phases[phase] += now - self.last
        self.last = now

    def scheduled(self, batch, scheduler) -> None:
        """Mark `schedule`, and note the batch's composition before the step changes its requests."""
        self.mark("schedule")
        seqs, prefill, decode, context, pairs = batch_composition(batch)
        self.composition = (seqs, prefill, decode, context, scheduler.kv.pool.num_used_blocks, len(batch.preempted),
                            len(scheduler.waiting), pairs)
        self.last = time.perf_counter()  # the profiler's own work stays out of the phases


def check_profile_path(path: str) -> None:
    """Refuse a profile path that can't be written before any work starts (a ValueError)."""
    if os.path.isdir(path):
        raise ValueError(f"cannot write the step profile to {path}: it is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write the step profile to {path}: no directory {folder}")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"cannot write the step profile to {path}: permission denied")


class StepProfiler:
    """The engine's step profile (`engine.profiler`): off until `enable(path)`, then one CSV row per
    step that ran a batch, until `disable()`. `with engine.profiler.enable(path): ...` closes it."""

    def __init__(self, decoder=None):
        self._decoder = decoder  # the fused C step, whose phase timers come on with the profile
        self._file = None
        self.path: str | None = None
        self.num_steps = 0
        self.last: StepRecord | None = None

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def enable(self, path: str) -> StepProfiler:
        """Start writing to `path` (replaced if it exists), header first; a bad path is a ValueError."""
        self.disable()
        check_profile_path(path)
        try:
            f = open(path, "w", encoding="ascii", newline="")
        except OSError as exc:
            raise ValueError(f"cannot write the step profile to {path}: {exc.strerror}") from None
        f.write(",".join(COLUMNS) + "\n")
        f.flush()
        self._file, self.path, self.num_steps, self.last = f, path, 0, None
        self._wall0, self._perf0 = time.time(), time.perf_counter()
        self._last_flush = self._perf0
        if self._decoder is not None:
            self._decoder.time_phases(True)
        self._fused_before = self._fused_totals()
        return self

    def disable(self) -> None:
        """Stop profiling; the file is flushed and closed. Safe to call when off."""
        if self._file is None:
            return
        f, self._file = self._file, None
        f.close()
        if self._decoder is not None:
            self._decoder.time_phases(False)

    close = disable

    def __enter__(self) -> StepProfiler:
        return self

    def __exit__(self, *exc) -> None:
        self.disable()

    def clock(self) -> StepClock | NullClock:
        """A clock for the step about to run: NO_CLOCK while profiling is off."""
        return NO_CLOCK if self._file is None else StepClock()

    def record(self, clock: StepClock | NullClock) -> None:
        """The step is over: write its row."""
        if clock is NO_CLOCK or self._file is None or clock.composition is None:
            return
        now = time.perf_counter()
        fused_now = self._fused_totals()
        fused = None
        if fused_now is not None:
            fused = [a - b for a, b in zip(fused_now, self._fused_before)]
            self._fused_before = fused_now
            if not any(fused):  # the timers only move while the fused step runs
                fused = None
        rec = StepRecord(self.num_steps, self._wall0 + (clock.start - self._perf0), now - clock.start,
                         clock.phases, fused, *clock.composition)
        self._file.write(rec.csv_line())
        self.num_steps += 1
        self.last = rec
        if now - self._last_flush >= FLUSH_EVERY_S:
            self._file.flush()
            self._last_flush = now

    def _fused_totals(self) -> list[float] | None:
        seconds = self._decoder.phase_seconds if self._decoder is not None else None
        return seconds.tolist() if seconds is not None else None
