"""Fairness between clients (the request's `user`), measured from what the client saw.

Service is counted as VTC counts it: `w_in` per prompt token when a request's first token
arrives (its admission, as near as a client can tell) and `w_out` per output token as its
chunk arrives, divided by the client's weight. A client is backlogged while it has a request
sent whose first token has not come yet (it is queued or in prefill).

- `max_gap`: over every interval in which two clients are both backlogged, the largest
  difference in the service they received in it (VTC's theorem: at most
  2 x max(w_in x L_in, w_out x M), with L_in the longest prompt and M the most tokens the
  running batch can hold: requests admitted before a client's counter grew keep producing).
- `jain`: Jain's index, (sum x)^2 / (n sum x^2), over the clients' service while all of them
  were backlogged (1: equal; 1/n: one client got everything).
"""

from __future__ import annotations

import bisect
import itertools

from ember.bench.metrics import RequestResult


def service_events(results: list[RequestResult], w_in: float = 1.0, w_out: float = 2.0,
                   weights: dict[str, float] | None = None) -> dict[str, list[tuple[float, float]]]:
    """user -> [(time, service added)], sorted by time."""
    events: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        if not r.success or r.user is None or not r.chunk_times:
            continue
        w = (weights or {}).get(r.user, 1.0)
        per_chunk = r.output_tokens / len(r.chunk_times)
        ev = events.setdefault(r.user, [])
        ev.append((r.chunk_times[0], w_in * r.prompt_tokens / w))
        ev.extend((t, w_out * per_chunk / w) for t in r.chunk_times)
    for ev in events.values():
        ev.sort()
    return events


def backlog_intervals(results: list[RequestResult]) -> dict[str, list[tuple[float, float]]]:
    """user -> merged intervals in which it had a request waiting for its first token."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        if r.user is None or not r.success:
            continue
        first = r.chunk_times[0] if r.chunk_times else r.end
        spans.setdefault(r.user, []).append((r.start, first))
    merged = {}
    for user, items in spans.items():
        out: list[list[float]] = []
        for a, b in sorted(items):
            if out and a <= out[-1][1]:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
        merged[user] = [(a, b) for a, b in out if b > a]
    return merged


def _intersect(x: list[tuple[float, float]], y: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out, i, j = [], 0, 0
    while i < len(x) and j < len(y):
        a, b = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if a < b:
            out.append((a, b))
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return out


class _Curve:
    """Cumulative service of one client, read at any time in O(log n)."""

    def __init__(self, events: list[tuple[float, float]]):
        self.times = [t for t, _ in events]
        self.cum = list(itertools.accumulate(s for _, s in events))

    def at(self, t: float) -> float:
        k = bisect.bisect_right(self.times, t)
        return self.cum[k - 1] if k else 0.0


def fairness(results: list[RequestResult], w_in: float = 1.0, w_out: float = 2.0,
             weights: dict[str, float] | None = None, batch_tokens: int | None = None) -> dict:
    """`batch_tokens`: M of VTC's bound (the most tokens the server's running batch holds);
    without it the bound is not reported."""
    events = service_events(results, w_in, w_out, weights)
    backlog = backlog_intervals(results)
    users = sorted(events)
    out: dict = {"users": users, "service": {u: sum(s for _, s in events[u]) for u in users},
                 "w_in": w_in, "w_out": w_out}
    curves = {u: _Curve(events[u]) for u in users}
    gap = 0.0
    for i, f in enumerate(users):
        for g in users[i + 1:]:
            for a, b in _intersect(backlog.get(f, []), backlog.get(g, [])):
                times = sorted({a, b} | {t for t, _ in events[f] + events[g] if a <= t <= b})
                diff = [curves[f].at(t) - curves[g].at(t) for t in times]
                gap = max(gap, max(diff) - min(diff))
    out["max_gap"] = gap
    if batch_tokens is not None:
        longest = max((r.prompt_tokens for r in results if r.success), default=0)
        out["vtc_bound"] = 2 * max(w_in * longest, w_out * batch_tokens)
    common = backlog.get(users[0], []) if users else []
    for u in users[1:]:
        common = _intersect(common, backlog.get(u, []))
    if common and len(users) > 1:
        got = [sum(curves[u].at(b) - curves[u].at(a) for a, b in common) for u in users]
        out["all_backlogged_s"] = sum(b - a for a, b in common)
        out["jain"] = sum(got) ** 2 / (len(got) * sum(x * x for x in got)) if any(got) else None
    return out
