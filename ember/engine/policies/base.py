"""The Policy seam: which waiting request goes next, and which running request gives way."""

from __future__ import annotations

from ember.registry import Registry
from ember.request import Request


class Policy:
    name = ""

    def on_arrival(self, request: Request) -> None:
        """Called when a request enters the waiting queue for the first time."""

    def order(self, waiting: list[Request]) -> list[Request]:
        """Waiting requests in the order they should be admitted."""
        return waiting

    def victim(self, running: list[Request]) -> Request:
        """The running request to preempt when KV blocks run out."""
        raise NotImplementedError

    def on_step(self, scheduled: list[tuple[Request, int]]) -> None:
        """Called with (request, tokens computed) after each step: fair policies charge here."""

    def on_finish(self, request: Request) -> None:
        """Called once when a request finishes or is aborted."""


POLICIES: Registry[Policy] = Registry("scheduling policy")
