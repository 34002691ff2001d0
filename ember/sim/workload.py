"""What the simulator serves: sessions of turns with token lengths and arrival times, either the
`ember bench` workloads (same generators, same seeds, same Poisson arrivals) or a trace CSV.

A trace CSV (the shape of the Azure LLM inference trace, plus Mooncake's prefix hash ids):
  arrival_s, prompt_tokens, output_tokens   required; one request per row, any order
  hash_ids                                  optional; space-separated ids of the prompt's leading
                                            blocks of --trace-block-tokens tokens: equal ids,
                                            equal content, so prefix caching sees the reuse
  user                                      optional; the request's `user` (fair policies)
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field

from ember.bench.workloads import WorkloadSpec, build_workload, poisson_arrivals
from ember.sampling_params import SamplingParams

PREFIX_BASE = 1 << 40  # token ids of shared prefix blocks: PREFIX_BASE + id, then filler
UNIQUE_BASE = 1 << 50  # the first token of each new message: unique, so no false prefix hits
FILLER = 2
PARAMS = SamplingParams(max_tokens=None, ignore_eos=True)  # one shared object: the simulator never samples


@dataclass(slots=True)
class SimTurn:
    prompt_tokens: int  # the new message's tokens (after the shared prefix and the history)
    output_tokens: int
    think_s: float = 0.0  # pause after the previous turn's reply
    prefix_ids: tuple[int, ...] = ()  # ids of shared prefix blocks (shared-prefix groups, trace hash ids)
    prefix_block_tokens: int = 0  # tokens each prefix id stands for
    extra: dict = field(default_factory=dict)  # program_id, tool_call (agent workloads)


@dataclass(slots=True)
class SimSession:
    arrival_s: float
    turns: list[SimTurn]
    user: str | None = None


class LengthOnlyText:
    """The bench's text maker without text: `build_workload` draws the same lengths from its own
    seeded generator, and the simulator needs only those."""

    def text(self, num_tokens: int) -> tuple[str, int]:
        return "", max(0, num_tokens)


def bench_sessions(spec: WorkloadSpec, rate: float) -> list[SimSession]:
    """The sessions `ember bench serve` would send for `spec` at `rate` requests per second."""
    sessions = build_workload(spec, None, maker=LengthOnlyText())
    arrivals = poisson_arrivals(len(sessions), rate, spec.seed)
    out = []
    for s, t0 in zip(sessions, arrivals):
        if not s.sent_at(t0):
            continue  # as the bench: an on/off tenant's request while it is off
        turns = []
        for t in s.turns:
            prefix = ((s.group,), t.system_len) if t.system_len else ((), 0)
            turns.append(SimTurn(t.input_len, t.output_len, t.think_time, *prefix, extra=dict(t.extra)))
        out.append(SimSession(t0, turns, s.user))
    return out


def read_trace(path: str, block_tokens: int = 512) -> list[SimSession]:
    """One single-turn session per row of a trace CSV, in arrival order (times start at 0)."""
    if block_tokens < 1:
        raise ValueError(f"--trace-block-tokens must be at least 1, got {block_tokens}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ValueError(f"cannot read the trace {path}: {exc.strerror}") from None
    need = ("arrival_s", "prompt_tokens", "output_tokens")
    if not rows or any(c not in rows[0] for c in need):
        raise ValueError(f"the trace {path} needs a header with {', '.join(need)} and at least one row")
    sessions = []
    for line, row in enumerate(rows, start=2):
        try:
            arrival, prompt, output = float(row["arrival_s"]), int(row["prompt_tokens"]), int(row["output_tokens"])
            ids = tuple(int(x) for x in (row.get("hash_ids") or "").split())
        except ValueError as exc:
            raise ValueError(f"{path}, line {line}: {exc}") from None
        if not arrival >= 0 or prompt < 1 or output < 1:
            raise ValueError(f"{path}, line {line}: arrival_s must be >= 0 and token counts >= 1")
        shared = min(len(ids), prompt // block_tokens)  # the ids cover whole blocks of the prompt
        turn = SimTurn(prompt - shared * block_tokens, output, prefix_ids=ids[:shared], prefix_block_tokens=block_tokens)
        sessions.append(SimSession(arrival, [turn], row.get("user") or None))
    sessions.sort(key=lambda s: s.arrival_s)
    first = sessions[0].arrival_s
    for s in sessions:
        s.arrival_s -= first
    return sessions


def prompt_ids(turn: SimTurn, history: list[int] | None, unique: int) -> list[int]:
    """A turn's token ids: the history (earlier turns and replies) or its shared prefix blocks,
    then the new message, which starts with a token no other message has (`unique`). Only
    lengths and shared prefixes matter to the scheduler and the prefix cache, not the ids."""
    if history is not None:
        ids = list(history)
    else:
        ids = []
        for h in turn.prefix_ids:
            ids.append(PREFIX_BASE + h)
            ids.extend([FILLER] * (turn.prefix_block_tokens - 1))
    if turn.prompt_tokens:
        ids.append(UNIQUE_BASE + unique)
        ids.extend([FILLER] * (turn.prompt_tokens - 1))
    return ids
