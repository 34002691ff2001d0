"""`ember bench` on bad input: one clear line and exit status 2, never a traceback."""

import pytest

from ember.cli import main

from .conftest import free_port


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("argv, message", [
    (["bench", "serve", "--request-rate", "0"], "rate must be positive"),
    (["bench", "serve", "--sweep-rate", "1,x"], "not a rate"),
    (["bench", "serve", "--endpoint", "embeddings"], "invalid choice"),
    (["bench", "serve", "--goodput", "ttft=5"], "--goodput"),
    (["bench", "serve", "--extra-body", "{oops"], "--extra-body is not JSON"),
    (["bench", "serve", "--base-url", "127.0.0.1:8000"], "must start with http://"),
    (["bench", "serve", "--workload", "multi-tenant", "--tenants", "a:b"], "--tenants"),
    (["bench", "latency", "--batch-size", "0"], "at least 1"),
    (["bench", "throughput", "--workload", "multi-turn"], "ember bench serve"),
    (["bench", "throughput", "--profile", "/nonexistent/steps.csv"], "cannot write the step profile"),
    (["bench", "compare", "/nonexistent/x.json"], "cannot read"),
])
def test_bad_input_is_one_clear_error(argv, message, capsys):
    code, err = run(argv, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_server_down_is_a_clear_error(capsys):
    code, err = run(["bench", "serve", "--base-url", f"http://127.0.0.1:{free_port()}", "--num-prompts", "2",
                     "--no-progress"], capsys)
    assert code == 2 and "cannot ask" in err and "Traceback" not in err


def test_failed_warm_up_stops_the_run_with_a_clear_error(capsys):
    code, err = run(["bench", "serve", "--base-url", f"http://127.0.0.1:{free_port()}", "--model", "m",
                     "--num-prompts", "2", "--no-progress"], capsys)
    assert code == 2 and "warm-up request" in err and "Traceback" not in err
