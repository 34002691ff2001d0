"""`vtc`: the Virtual Token Counter (Sheng et al., "Fairness in Serving Large Language Models").

One counter per client (the request's `user`; requests without one share the client ""),
charged `vtc_input_weight` per prompt token when a request is admitted and
`vtc_output_weight` per output token as it is produced, divided by the client's weight
(`--client-weights FILE`: a JSON object of client -> weight, default 1). The next request
admitted is the oldest of the backlogged client (one with waiting requests) whose counter is
smallest. A client whose waiting queue was empty is lifted on arrival to the smallest counter of
the other backlogged clients, so a client that was idle cannot bank service and then starve
the others. Under KV pressure, the newest request of the running client with the largest
counter gives way.
"""

from __future__ import annotations

import json
from collections import defaultdict

from ember.engine.policies.base import POLICIES, Policy, PreemptReason, SchedulerView
from ember.request import Request


def client_of(request: Request) -> str:
    return request.user or ""


def load_client_weights(path: str) -> dict[str, float]:
    """A JSON object mapping client (the request's `user`) to a positive weight."""
    try:
        with open(path) as f:
            weights = json.load(f)
    except OSError as e:
        raise ValueError(f"client_weights {path!r}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"client_weights {path!r} is not JSON: {e}") from None
    if not isinstance(weights, dict):
        raise ValueError(f"client_weights {path!r}: expected an object of client -> weight")
    for client, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
            raise ValueError(f"client_weights {path!r}: the weight of {client!r} must be a positive number, got {w!r}")
    return {str(k): float(v) for k, v in weights.items()}


@POLICIES.register("vtc")
class VTCPolicy(Policy):
    name = "vtc"

    def __init__(self, config=None, weights: dict[str, float] | None = None,
                 input_weight: float | None = None, output_weight: float | None = None):
        super().__init__(config)
        if weights is None:
            path = getattr(config, "client_weights", "")
            weights = load_client_weights(path) if path else {}
        self.weights = weights
        self.input_weight = input_weight if input_weight is not None else getattr(config, "vtc_input_weight", 1.0)
        self.output_weight = output_weight if output_weight is not None else getattr(config, "vtc_output_weight", 2.0)
        self.counters: dict[str, float] = defaultdict(float)
        self.lifted: dict[str, float] = defaultdict(float)  # what lifts added to each counter (not service)
        self._waiting: dict[str, set[str]] = defaultdict(set)  # client -> ids not yet admitted
        self._charged_out: dict[str, int] = {}  # admitted request id -> output tokens charged

    def weight(self, client: str) -> float:
        return self.weights.get(client, 1.0)

    def _charge(self, client: str, tokens: int, price: float) -> None:
        self.counters[client] += tokens * price / self.weight(client)

    # --- hooks ------------------------------------------------------------------------------
    def on_arrival(self, request: Request) -> None:
        client = client_of(request)
        if not self._waiting[client]:
            backlogged = [self.counters[c] for c, ids in self._waiting.items() if ids and c != client]
            if backlogged and min(backlogged) > self.counters[client]:
                self.lifted[client] += min(backlogged) - self.counters[client]
                self.counters[client] = min(backlogged)
        self._waiting[client].add(request.request_id)

    def order(self, waiting: list[Request], view: SchedulerView | None = None) -> list[Request]:
        """VTC's pick repeated: each pick charges its prompt to a copy of the counters, so the
        second request admitted in one step already sees the first one's charge."""
        queues: dict[str, list[Request]] = defaultdict(list)
        for r in sorted(waiting, key=lambda r: (r.num_preemptions == 0, r.arrival_order)):
            queues[client_of(r)].append(r)
        counters = {c: self.counters[c] for c in queues}
        ordered = []
        while queues:
            client = min(queues, key=lambda c: (counters[c], queues[c][0].arrival_order))
            r = queues[client].pop(0)
            ordered.append(r)
            if r.request_id in self._waiting[client]:  # a preempted request paid its prompt already
                counters[client] += r.num_prompt_tokens * self.input_weight / self.weight(client)
            if not queues[client]:
                del queues[client]
        return ordered

    def on_step(self, scheduled: list[tuple[Request, int]]) -> None:
        for request, _ in scheduled:
            if not request.is_finished:  # a finished one was settled by on_finish
                self._settle(request)

    def on_finish(self, request: Request) -> None:
        self._settle(request)
        self._waiting[client_of(request)].discard(request.request_id)  # aborted while waiting
        self._charged_out.pop(request.request_id, None)

    def _settle(self, request: Request) -> None:
        """Charge what the request has received since the last charge: its prompt once it has
        been admitted, then each output token (an n > 1 sibling pays only outputs: it shares
        its parent's prompt)."""
        client = client_of(request)
        if request.request_id in self._waiting[client] and request.num_computed_tokens > 0:
            self._waiting[client].discard(request.request_id)
            self._charge(client, request.num_prompt_tokens, self.input_weight)
        done, produced = self._charged_out.get(request.request_id, 0), len(request.output_token_ids)
        if produced > done:
            self._charge(client, produced - done, self.output_weight)
        self._charged_out[request.request_id] = produced

    def victim(self, running: list[Request], reason: PreemptReason, waiting: Request | None = None) -> Request | None:
        if reason is PreemptReason.PRIORITY:
            return None
        return max(running, key=lambda r: (self.counters[client_of(r)], r.arrival_order))
