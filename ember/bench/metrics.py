"""Benchmark metrics, defined as vLLM's `benchmark_serving` defines them.

For one request, with `start` the moment the client sent it:
  TTFT  = arrival of the first chunk that carries generated text - start
  ITL   = the gaps between consecutive text-carrying chunks (one value per gap; a chunk that
          carries several tokens still counts as one gap, as in vLLM)
  TPOT  = (E2EL - TTFT) / (output tokens - 1), only for requests with more than one output token
  E2EL  = end of the response stream - start
Over a run of `duration` seconds (first send to last response end):
  request throughput = completed / duration; output throughput = output tokens / duration;
  total token throughput = (prompt + output tokens) / duration;
  goodput = completed requests that meet every given SLO (TTFT, TPOT, E2EL, each <= its limit
  in ms; TPOT counts as 0 for one-token outputs, as vLLM does) / duration.
Percentiles interpolate linearly between order statistics (numpy's default).
Failed requests count only in `failed`; they never enter a latency or token figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

PERCENTILES = (50, 90, 99)
SLO_NAMES = ("ttft", "tpot", "e2el")


@dataclass
class RequestResult:
    """What the client saw of one request. Times are seconds on the client's monotonic clock."""
    success: bool
    start: float                         # when the request was sent
    scheduled: float = 0.0               # when the arrival process wanted it sent (queueing shows as start > scheduled)
    end: float = 0.0                     # when the response stream ended
    chunk_times: list[float] = field(default_factory=list)  # arrival of each text-carrying chunk
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str = ""
    user: str | None = None
    session: int = 0
    turn: int = 0
    generated_text: str = ""

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.start if self.chunk_times else self.end - self.start

    @property
    def itl(self) -> list[float]:
        c = self.chunk_times
        return [c[i] - c[i - 1] for i in range(1, len(c))]

    @property
    def e2el(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        if self.output_tokens <= 1:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)

    def to_json(self, keep_text: bool = False) -> dict:
        d = asdict(self)
        if not keep_text:
            d.pop("generated_text")
        return d

    @classmethod
    def from_json(cls, d: dict) -> "RequestResult":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def summarize(values, scale: float = 1.0) -> dict:
    """mean, median, std, p50/p90/p99 and max of `values` times `scale` (1000 for ms); zeros when empty."""
    keys = ["mean", "median", "std", "max"] + [f"p{p}" for p in PERCENTILES]
    if len(values) == 0:
        return {k: 0.0 for k in keys} | {"count": 0}
    a = np.asarray(values, dtype=np.float64) * scale
    out = {"mean": float(a.mean()), "median": float(np.median(a)), "std": float(a.std()), "max": float(a.max())}
    out.update({f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES})
    out["count"] = int(a.size)
    return out


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    """['ttft:500', 'tpot:50'] -> {'ttft': 500.0, 'tpot': 50.0} (milliseconds)."""
    slos: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition(":")
        name = name.strip().lower()
        if not sep or name not in SLO_NAMES:
            raise ValueError(f"--goodput: expected NAME:MS with NAME one of {', '.join(SLO_NAMES)}, got {item!r}")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"--goodput: {item!r}: {value!r} is not a number of milliseconds") from None
        if ms <= 0:
            raise ValueError(f"--goodput: {item!r}: the limit must be positive")
        slos[name] = ms
    return slos


def meets_slos(r: RequestResult, slos: dict[str, float]) -> bool:
    measured = {"ttft": r.ttft, "tpot": r.tpot or 0.0, "e2el": r.e2el}
    return all(measured[name] * 1000.0 <= limit for name, limit in slos.items())


def _gaps(results: list[RequestResult]) -> np.ndarray:
    """Every inter-token gap of every request (RequestResult.itl), as one array: 8 bytes a gap,
    where a list of floats takes 32 (a simulated run has millions)."""
    parts = [np.diff(np.asarray(r.chunk_times, dtype=np.float64)) for r in results if len(r.chunk_times) > 1]
    return np.concatenate(parts) if parts else np.empty(0)


def compute_metrics(results: list[RequestResult], duration: float, slos: dict[str, float] | None = None) -> dict:
    """The run's figures (latencies in ms, throughputs per second) from its per-request results."""
    ok = [r for r in results if r.success]
    prompt = sum(r.prompt_tokens for r in ok)
    output = sum(r.output_tokens for r in ok)
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)
    m = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": duration,
        "total_input_tokens": prompt,
        "total_output_tokens": output,
        "request_throughput": per_s(len(ok)),
        "output_throughput": per_s(output),
        "total_token_throughput": per_s(prompt + output),
        "ttft_ms": summarize([r.ttft for r in ok], 1000.0),
        "tpot_ms": summarize([r.tpot for r in ok if r.tpot is not None], 1000.0),
        "itl_ms": summarize(_gaps(ok), 1000.0),
        "e2el_ms": summarize([r.e2el for r in ok], 1000.0),
    }
    if slos:
        good = sum(1 for r in ok if meets_slos(r, slos))
        m["goodput"] = {"slos_ms": dict(slos), "good_requests": good, "request_goodput": per_s(good)}
    errors: dict[str, int] = {}
    for r in results:
        if not r.success:
            key = r.error.splitlines()[0][:120] if r.error else "unknown error"
            errors[key] = errors.get(key, 0) + 1
    m["errors"] = errors
    return m
