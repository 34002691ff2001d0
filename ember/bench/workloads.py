"""Benchmark workloads, generated offline from a seed: the same seed gives the same requests.

A workload is a list of `Session`s. Every workload but `multi-turn` has one turn per session.
Arrival times are not part of the workload: the runner draws them (Poisson at --request-rate).

- `random`: input and output lengths uniform in [L*(1-r), L*(1+r)] for --input-len, --output-len
  and --range-ratio r (r=0: every request exactly L).
- `chat-like`: heavy-tailed lengths shaped like public chat traces. Input and output lengths are
  lognormal, clipped to [4, --max-input-len] and [1, --max-output-len]:
      input  ~ LogNormal(mu=ln 42,  sigma=1.0)  -> median 42, mean ~69 tokens
      output ~ LogNormal(mu=ln 156, sigma=0.8)  -> median 156, mean ~214 tokens
  The means are those LMSYS-Chat-1M reports (69.5 tokens per prompt, 214.5 per response; Zheng
  et al. 2023); the lognormal shape and the sigmas are this tool's choice of a heavy right tail,
  not a fit to the trace.
- `shared-prefix`: --num-prefixes groups; every request of a group starts with the group's
  --prefix-len-token system prompt, then its own --input-len-token question. Groups interleave.
- `multi-turn`: conversations of --turns turns. Each turn sends a new --input-len-token user
  message after the whole history (earlier messages and the server's real replies); before each
  turn after the first the user thinks for an exponential time of mean --think-time seconds.
  --num-prompts counts turns, so conversations = ceil(num_prompts / turns).
- `agent`: agent programs of --turns turns, each turn but the last ending in a tool call: the
  program waits for the tool (a lognormal duration, sigma 0.5, median 0.3 s for `lookup`,
  1.5 s for `search`, 5 s for `code`, each x --think-time; the tool drawn uniformly), then sends
  the tool's result (an --input-len-token message) after the whole history. Every request
  carries `program_id` and, but the last, `tool_call` (for `--policy continuum`).
- `rag`: retrieval-augmented requests. A pool of --num-docs documents of --doc-len tokens is cut
  from the evaluation text; each request takes --docs-per-request of them in random order, then
  a --input-len-token question. Each document comes from the pool with probability --doc-reuse,
  else it is a fresh one no other request sees. Documents are sent as reusable chunks (chat
  content parts with `cache_control: {"type": "chunk"}`, completions' `documents` field) unless
  --no-chunk-marks, which sends them as plain text, for servers without a chunk cache.
- `--priority-levels K` (any workload): each session's requests carry `priority` drawn uniformly
  from 0..K-1 (lower is sooner, for `--policy priority`), from a generator of their own, so
  the lengths and texts stay those of the same seed without priorities.
- `multi-tenant`: --tenants NAME:WEIGHT:INPUT:OUTPUT[:ON/OFF],... Each request belongs to a
  tenant drawn with probability WEIGHT/sum(WEIGHTS) and is sent with that `user`; with Poisson
  arrivals at rate R this is exactly each tenant sending its own Poisson stream at
  R*WEIGHT/sum(WEIGHTS). A tenant with ON/OFF seconds (VTC's on/off client) sends only in its
  on periods: a request whose arrival falls in an off period (t mod (ON+OFF) >= ON) is not sent,
  which thins its stream to the same rate while on and nothing while off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ember.bench.corpus import PromptMaker

WORKLOADS = ("random", "chat-like", "shared-prefix", "multi-turn", "agent", "multi-tenant", "rag")
TOOLS = (("lookup", 0.3), ("search", 1.5), ("code", 5.0))  # (name, median seconds) of the agent workload
TOOL_SIGMA = 0.5
CHAT_INPUT = (math.log(42.0), 1.0)    # (mu, sigma) of the lognormal input length
CHAT_OUTPUT = (math.log(156.0), 0.8)  # (mu, sigma) of the lognormal output length


@dataclass
class Turn:
    """One request to send: a user message (the whole prompt, for completions) and its output budget."""
    text: str
    input_len: int                 # tokens of `text` by the bench's tokenizer
    output_len: int                # max_tokens
    system: str = ""               # shared-prefix: the group's system prompt
    system_len: int = 0
    think_time: float = 0.0        # seconds to wait after the previous turn's reply
    extra: dict = field(default_factory=dict)  # body fields of this turn (agent: program_id, tool_call)
    documents: list[str] = field(default_factory=list)  # rag: the documents before the question
    documents_len: int = 0


@dataclass
class Session:
    turns: list[Turn]
    user: str | None = None
    group: int = 0
    window: tuple[float, float] | None = None  # (on, off) seconds: sent only if it arrives while on

    def sent_at(self, arrival: float) -> bool:
        """Whether a session arriving `arrival` seconds into the run is sent at all."""
        return self.window is None or arrival % (self.window[0] + self.window[1]) < self.window[0]


@dataclass
class WorkloadSpec:
    name: str = "random"
    num_prompts: int = 100
    seed: int = 0
    input_len: int = 128
    output_len: int = 64
    range_ratio: float = 0.0
    max_input_len: int = 1024
    max_output_len: int = 512
    num_prefixes: int = 4
    prefix_len: int = 256
    turns: int = 3
    think_time: float = 1.0
    tenants: list[tuple[str, float, int, int]] = field(default_factory=lambda: [("a", 3.0, 64, 32), ("b", 1.0, 256, 128)])
    tenant_windows: dict[str, tuple[float, float]] = field(default_factory=dict)  # on/off tenants
    num_docs: int = 16
    doc_len: int = 256
    docs_per_request: int = 4
    doc_reuse: float = 1.0
    priority_levels: int = 0  # > 1: a `priority` per session, uniform in 0..levels-1

    def validate(self) -> None:
        if self.name not in WORKLOADS:
            raise ValueError(f"--workload {self.name!r} is not one of: {', '.join(WORKLOADS)}")
        for key in ("num_prompts", "input_len", "output_len", "max_input_len", "max_output_len", "num_prefixes", "turns",
                    "num_docs", "doc_len", "docs_per_request"):
            if getattr(self, key) < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        if self.prefix_len < 0 or self.think_time < 0:
            raise ValueError("--prefix-len and --think-time must not be negative")
        if not 0.0 <= self.range_ratio < 1.0:
            raise ValueError(f"--range-ratio must be in [0, 1), got {self.range_ratio}")
        if not 0.0 <= self.doc_reuse <= 1.0:
            raise ValueError(f"--doc-reuse must be in [0, 1], got {self.doc_reuse}")
        if self.name == "rag" and self.docs_per_request > self.num_docs:
            raise ValueError(f"--docs-per-request {self.docs_per_request} is more than --num-docs {self.num_docs}")
        if not self.tenants:
            raise ValueError("--tenants: give at least one NAME:WEIGHT:INPUT:OUTPUT")
        if self.priority_levels < 0:
            raise ValueError(f"--priority-levels must not be negative, got {self.priority_levels}")


def parse_tenants(text: str) -> list[tuple[str, float, int, int]]:
    """'a:3:64:32,b:1:256:128:20/20' -> [('a', 3.0, 64, 32), ('b', 1.0, 256, 128)]."""
    return [item[:4] for item in _tenant_items(text)]


def parse_tenant_windows(text: str) -> dict[str, tuple[float, float]]:
    """The on/off tenants of --tenants: 'b:1:256:128:20/20' -> {'b': (20.0, 20.0)}."""
    return {item[0]: item[4] for item in _tenant_items(text) if item[4] is not None}


def _tenant_items(text: str) -> list[tuple]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(":")
        try:
            name, weight, inp, outp = parts[0], float(parts[1]), int(parts[2]), int(parts[3])
            window = None
            if len(parts) == 5:
                on, off = (float(x) for x in parts[4].split("/"))
                if not (on > 0 and off >= 0):
                    raise ValueError
                window = (on, off)
            if len(parts) not in (4, 5) or not name or weight <= 0 or inp < 1 or outp < 1:
                raise ValueError
        except (ValueError, IndexError):
            raise ValueError(f"--tenants: {item!r} is not NAME:WEIGHT:INPUT:OUTPUT[:ON/OFF] "
                             "(weight > 0, lengths >= 1, ON > 0 and OFF >= 0 seconds)") from None
        out.append((name, weight, inp, outp, window))
    return out


def _uniform_len(rng, length: int, ratio: float) -> int:
    lo, hi = max(1, int(length * (1 - ratio))), max(1, int(length * (1 + ratio)))
    return int(rng.integers(lo, hi + 1))


def _lognormal_len(rng, mu_sigma: tuple[float, float], lo: int, hi: int) -> int:
    return int(np.clip(round(rng.lognormal(*mu_sigma)), lo, hi))


def session_priorities(num_sessions: int, levels: int, seed: int) -> list[int]:
    """The priority of each session under --priority-levels (its own generator: seed + 2)."""
    return [int(p) for p in np.random.default_rng(seed + 2).integers(levels, size=num_sessions)]


def build_workload(spec: WorkloadSpec, tokenizer, maker=None) -> list[Session]:
    """The sessions of `spec`: lengths from one seeded generator, text from another. `maker`
    replaces the text maker (`text(n) -> (text, tokens)`): the simulator wants lengths only."""
    sessions = _build(spec, tokenizer, maker)
    if spec.priority_levels > 1:
        for session, priority in zip(sessions, session_priorities(len(sessions), spec.priority_levels, spec.seed)):
            for turn in session.turns:
                turn.extra["priority"] = priority
    return sessions


def _build(spec: WorkloadSpec, tokenizer, maker=None) -> list[Session]:
    spec.validate()
    rng = np.random.default_rng(spec.seed)
    maker = maker if maker is not None else PromptMaker(tokenizer, seed=spec.seed + 1)
    n = spec.num_prompts

    def one(inp: int, outp: int, **kw) -> Session:
        text, real = maker.text(inp)
        return Session([Turn(text, real, outp)], **kw)

    if spec.name == "random":
        return [one(_uniform_len(rng, spec.input_len, spec.range_ratio),
                    _uniform_len(rng, spec.output_len, spec.range_ratio)) for _ in range(n)]
    if spec.name == "chat-like":
        return [one(_lognormal_len(rng, CHAT_INPUT, 4, spec.max_input_len),
                    _lognormal_len(rng, CHAT_OUTPUT, 1, spec.max_output_len)) for _ in range(n)]
    if spec.name == "shared-prefix":
        prefixes = [maker.text(spec.prefix_len) for _ in range(spec.num_prefixes)]
        sessions = []
        for i in range(n):
            g = int(rng.integers(spec.num_prefixes))
            s = one(_uniform_len(rng, spec.input_len, spec.range_ratio),
                    _uniform_len(rng, spec.output_len, spec.range_ratio), group=g)
            s.turns[0].system, s.turns[0].system_len = prefixes[g]
            sessions.append(s)
        return sessions
    if spec.name == "multi-turn":
        sessions, left = [], n
        while left > 0:
            k = min(spec.turns, left)
            turns = []
            for t in range(k):
                text, real = maker.text(_uniform_len(rng, spec.input_len, spec.range_ratio))
                think = float(rng.exponential(spec.think_time)) if t and spec.think_time > 0 else 0.0
                turns.append(Turn(text, real, _uniform_len(rng, spec.output_len, spec.range_ratio), think_time=think))
            sessions.append(Session(turns, group=len(sessions)))
            left -= k
        return sessions
    if spec.name == "agent":
        sessions, left = [], n
        while left > 0:
            k, program = min(spec.turns, left), f"job-{spec.seed}-{len(sessions)}"
            turns, pause = [], 0.0
            for t in range(k):
                text, real = maker.text(_uniform_len(rng, spec.input_len, spec.range_ratio))
                turn = Turn(text, real, _uniform_len(rng, spec.output_len, spec.range_ratio), think_time=pause,
                            extra={"program_id": program})
                if t < k - 1:
                    tool, median = TOOLS[int(rng.integers(len(TOOLS)))]
                    turn.extra["tool_call"] = tool
                    pause = float(rng.lognormal(math.log(median * spec.think_time), TOOL_SIGMA)) if spec.think_time else 0.0
                turns.append(turn)
            sessions.append(Session(turns, group=len(sessions)))
            left -= k
        return sessions
    if spec.name == "rag":
        return _rag(spec, rng, maker, one)
    # multi-tenant
    weights = np.array([w for _, w, _, _ in spec.tenants], dtype=np.float64)
    picks = rng.choice(len(spec.tenants), size=n, p=weights / weights.sum())
    sessions = []
    for k in picks:
        name, _, inp, outp = spec.tenants[int(k)]
        sessions.append(one(_uniform_len(rng, inp, spec.range_ratio), _uniform_len(rng, outp, spec.range_ratio),
                            user=name, group=int(k), window=spec.tenant_windows.get(name)))
    return sessions


def _rag(spec: WorkloadSpec, rng, maker, one) -> list[Session]:
    pool = [maker.text(spec.doc_len) for _ in range(spec.num_docs)]
    sessions = []
    for _ in range(spec.num_prompts):
        picks = rng.choice(spec.num_docs, size=spec.docs_per_request, replace=False)
        docs = [pool[int(i)] if rng.random() < spec.doc_reuse else maker.text(spec.doc_len) for i in picks]
        s = one(_uniform_len(rng, spec.input_len, spec.range_ratio), _uniform_len(rng, spec.output_len, spec.range_ratio))
        s.turns[0].documents = [text for text, _ in docs]
        s.turns[0].documents_len = sum(n for _, n in docs)
        sessions.append(s)
    return sessions


def poisson_arrivals(count: int, rate: float, seed: int) -> list[float]:
    """Send times (s after the start) of `count` arrivals at `rate` per second; all 0 for rate=inf."""
    if math.isinf(rate):
        return [0.0] * count
    gaps = np.random.default_rng(seed + 7919).exponential(1.0 / rate, size=count)
    gaps[0] = 0.0  # the first request goes at once; the run's clock starts with it
    return [float(t) for t in np.cumsum(gaps)]


def workload_summary(sessions: list[Session]) -> dict:
    turns = [t for s in sessions for t in s.turns]
    return {"sessions": len(sessions), "requests": len(turns),
            "input_tokens": sum(t.input_len + t.system_len + t.documents_len for t in turns),
            "max_output_tokens": sum(t.output_len for t in turns)}
