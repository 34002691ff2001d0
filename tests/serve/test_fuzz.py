"""Property-based requests generated from /openapi.json (schemathesis): the server never answers 5xx.

Every operation gets a bounded number of generated requests, valid and invalid (schemathesis'
positive and negative modes); the server has a 64-token context so any generated request
finishes quickly.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.serve.conftest import assert_no_leak

EXAMPLES_PER_OPERATION = 30  # per operation and per mode (valid, invalid)


def test_openapi_fuzzing_finds_no_server_error(make_server):
    with make_server(max_model_len=64, max_num_seqs=8) as server:
        schema = schemathesis.openapi.from_url(server.base_url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/models"}
        statuses: dict[int, int] = {}
        # a GET without parameters has no invalid form to generate
        runs = [(op, m) for op in operations for m in GenerationMode
                if m is GenerationMode.POSITIVE or op.method.upper() == "POST"]
        for operation, mode in runs:
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                response = case.call(timeout=60)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500, \
                    f"{case.method} {case.path} {case.body!r} -> {response.status_code}: {response.text[:300]}"
                if response.status_code >= 400:
                    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            check()
        print("statuses:", statuses)
        assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0  # both kinds were generated
        assert_no_leak(server)
