"""`ember serve --profile`: the server's engine writes one row per step while it serves, and the
file is complete once the server stops."""

from __future__ import annotations

import csv

from ember.cli import main
from ember.engine.profile import COLUMNS
from tests.serve.conftest import running_server


def test_a_profiled_server_writes_a_row_per_step(ember_lm, tmp_path):
    path = tmp_path / "steps.csv"
    # one thread: on a busy 2-core machine two spin-waiting OpenMP threads are ~10x slower
    with running_server(ember_lm, profile=str(path), threads=1, enable_prefix_caching=False) as server:
        client = server.client()
        plain = client.completions.create(model=server.model, prompt="The capital of France is", max_tokens=5,
                                          temperature=0, extra_body={"ignore_eos": True})
        chat = client.chat.completions.create(model=server.model, max_tokens=4, temperature=0,
                                              messages=[{"role": "user", "content": "Name a colour."}],
                                              extra_body={"ignore_eos": True})
        server.wait_idle()
        profiler = server.engine.profiler
        assert profiler.enabled
    assert not profiler.enabled  # the engine thread closed it on the way out
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS
    assert len(rows) == profiler.num_steps >= 5
    assert sum(int(r["prefill_tokens"]) for r in rows) == plain.usage.prompt_tokens + chat.usage.prompt_tokens
    assert sum(int(r["decode_rows"]) for r in rows) == (5 - 1) + (4 - 1)
    assert all(float(r["forward_s"]) > 0 and float(r["step_s"]) > 0 for r in rows)


def test_serve_refuses_an_unwritable_profile_before_loading(tmp_path, capsys):
    code = main(["serve", "--port", "0", "--profile", str(tmp_path / "missing" / "steps.csv")])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot write the step profile" in err and "Traceback" not in err
    assert "loading" not in err
