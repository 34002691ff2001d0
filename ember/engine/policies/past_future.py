"""`past-future` and `conservative`: admission by the KV memory a batch will need at its peak.

Each running request holds `a` tokens of KV now and will add `b` more before it finishes.
Sorted by `b`, largest first, the batch peaks when some request finishes: just before the
k-th finishes, requests 1..k are alive and each has grown by b_k, so

    peak = max over k of (k * b_k + a_1 + ... + a_k)

(LightLLM's formula). A waiting request is admitted, in arrival order, only while the peak
of the running requests plus it fits the cache; otherwise nothing more is admitted this step.

- `past-future` (LightLLM's scheduler, the paper's estimate): `b` comes from the output lengths
  of the last `past_future_history` finished requests: for a request that has generated g
  tokens, up to 5 lengths longer than g are sampled from that history and their mean, less g,
  is its future (capped by its max_tokens). With no history yet, or no longer length in it,
  the future is the request's whole budget.
- `conservative`: every request is assumed to use its whole max_tokens: no preemption is ever
  needed, at the price of a batch mostly reserved for tokens never generated.
- `fcfs` is the third point of comparison ("aggressive"): admit while blocks are free now.

Shared prefix blocks are counted once per request: the estimate errs toward admitting less.
"""

from __future__ import annotations

import random
from collections import deque

from ember.engine.policies.base import POLICIES, Admission, SchedulerView
from ember.engine.policies.fcfs import FCFSPolicy
from ember.request import Request, RequestStatus

NUM_SAMPLES = 5


def peak_tokens(items: list[tuple[int, int]]) -> int:
    """items: (tokens held now, tokens still to come) per request -> the peak of their sum."""
    peak, held = 0, 0
    for k, (a, b) in enumerate(sorted(items, key=lambda x: -x[1]), start=1):
        held += a
        peak = max(peak, held + k * b)
    return peak


@POLICIES.register("conservative")
class ConservativePolicy(FCFSPolicy):
    name = "conservative"

    def future(self, request: Request) -> int:
        """Tokens the request will still add to the cache (its whole remaining budget here)."""
        return max(request.max_tokens - len(request.output_token_ids), 0)

    def admit(self, request: Request, view: SchedulerView) -> Admission:
        items = [(r.num_tokens, self.future(r)) for r in view.running]
        items.append((request.num_tokens, self.future(request)))
        fits = peak_tokens(items) <= view.total_blocks * view.block_size
        return Admission.ADMIT if fits or not view.running else Admission.STOP


@POLICIES.register("past-future")
class PastFuturePolicy(ConservativePolicy):
    name = "past-future"

    def __init__(self, config=None, history: int | None = None, seed: int | None = None):
        super().__init__(config)
        size = history if history is not None else getattr(config, "past_future_history", 200)
        self.history: deque[int] = deque(maxlen=size)
        self.rng = random.Random(seed if seed is not None else getattr(config, "seed", 0))

    def future(self, request: Request) -> int:
        budget = super().future(request)
        generated = len(request.output_token_ids)
        longer = [n for n in self.history if n > generated]
        if not longer:
            return budget
        samples = [self.rng.choice(longer) for _ in range(min(NUM_SAMPLES, len(longer)))]
        return min(round(sum(samples) / len(samples)) - generated, budget)

    def on_finish(self, request: Request) -> None:
        if request.status is not RequestStatus.FINISHED_ABORTED:
            self.history.append(len(request.output_token_ids))
