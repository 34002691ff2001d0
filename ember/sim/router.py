"""Routers: which replica a new request goes to. Each sees the replicas' live schedulers.

- `round-robin`: replicas in turn, blind to load;
- `least-loaded`: the replica with the fewest unfinished requests (ties: the lowest index);
- `cache-aware`: the replica whose prefix cache already holds the longest prefix of the prompt,
  unless that replica has `max_num_seqs` more unfinished requests than the least loaded one
  (then the least loaded): the balance guard SGLang's cache-aware router also keeps.
"""

from __future__ import annotations

ROUTERS = ("round-robin", "least-loaded", "cache-aware")


class RoundRobin:
    def __init__(self):
        self.next = 0

    def pick(self, replicas, request) -> int:
        i = self.next % len(replicas)
        self.next = i + 1
        return i


class LeastLoaded:
    def pick(self, replicas, request) -> int:
        return min(range(len(replicas)), key=lambda i: replicas[i].scheduler.num_unfinished)


class CacheAware:
    def pick(self, replicas, request) -> int:
        loads = [r.scheduler.num_unfinished for r in replicas]
        least = min(range(len(replicas)), key=loads.__getitem__)
        hits = [r.scheduler.kv.peek_prefix(request) for r in replicas]
        best = max(range(len(replicas)), key=lambda i: (hits[i], -loads[i]))
        if hits[best] == 0 or loads[best] - loads[least] > replicas[best].scheduler.max_num_seqs:
            return least
        return best


def make_router(name: str):
    makers = {"round-robin": RoundRobin, "least-loaded": LeastLoaded, "cache-aware": CacheAware}
    if name not in makers:
        raise ValueError(f"--router {name!r} is not one of: {', '.join(ROUTERS)}")
    return makers[name]()
