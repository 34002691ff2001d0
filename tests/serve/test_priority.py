"""`priority` on both generation routes: it reaches the scheduler's requests, and a value that
is not an integer is a 400 that names the field."""

from __future__ import annotations

import pytest

from ember.engine.policies.priority import PriorityPolicy
from tests.serve.conftest import assert_no_leak
from tests.serve.test_errors import CHAT, COMPLETIONS, USER, assert_error


class RecordingPriority(PriorityPolicy):
    """The priority policy, keeping each arriving request's priority by its request id."""

    def __init__(self):
        self.arrivals: dict[str, int] = {}

    def on_arrival(self, request):
        self.arrivals[request.group_id] = request.priority


def test_priority_reaches_the_scheduler(make_server):
    with make_server(policy="priority") as server:
        policy = RecordingPriority()
        server.engine.scheduler.policy = policy  # the engine thread is idle: no request yet
        client = server.client()
        low = client.completions.create(model=server.model, prompt="One, two,", max_tokens=3, temperature=0,
                                        extra_body={"priority": -3})
        chat = client.chat.completions.create(model=server.model, messages=USER, max_tokens=3, temperature=0,
                                              extra_body={"priority": 7})
        default = client.completions.create(model=server.model, prompt="One, two,", max_tokens=3, temperature=0)
        assert policy.arrivals == {low.id: -3, chat.id: 7, default.id: 0}
        assert low.choices[0].text == default.choices[0].text  # the order changes, not the output
        assert_no_leak(server)


@pytest.mark.parametrize("value", ["high", "1", 1.5, None])
@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_a_priority_that_is_not_an_integer_is_400(server, path, value):
    body = {"prompt": "x"} if path == COMPLETIONS else {"messages": USER}
    error = assert_error(server.post(path, json={**body, "priority": value, "max_tokens": 1}), 400, param="priority")
    assert "priority" in error["message"]
