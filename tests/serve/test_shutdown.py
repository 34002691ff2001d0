"""The real `ember serve` command: ready line, SIGTERM drains running streams and exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest


def start_server(*flags: str) -> tuple[subprocess.Popen, str, list[str]]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "ember.cli", "serve", "--port", "0", "--threads", "2",
                             "--kv-cache-tokens", "4096", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    base = None
    deadline = time.monotonic() + 180
    while base is None:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("ember serve exited before it was ready:\n" + "".join(lines))
        lines.append(line)
        m = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", line)
        if m:
            base = m.group(1)
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("ember serve did not become ready")
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, base, lines


def test_sigterm_drains_running_requests_then_exits_0():
    proc, base, lines = start_server("--shutdown-timeout", "60")
    try:
        assert httpx.get(base + "/health").status_code == 200
        assert any("curl " in line for line in lines)  # the ready-to-paste command
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=120)
        stream = client.completions.create(model="SmolLM2-135M-Instruct.Q4_1", prompt="Once upon a time",
                                           max_tokens=40, temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})
        chunks = iter(stream)
        first = next(chunks)
        proc.send_signal(signal.SIGTERM)
        rest = list(chunks)  # the running request still finishes
        reasons = [c.choices[0].finish_reason for c in [first, *rest] if c.choices[0].finish_reason]
        assert reasons == ["length"]
        assert proc.wait(60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(base + "/health")  # admission stopped: nothing listens any more
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "".join(lines)
    assert '"POST /v1/completions" 200' in log  # the access log line of that request


def test_shutdown_timeout_aborts_the_rest():
    proc, base, lines = start_server("--shutdown-timeout", "1")
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=120)
        stream = client.completions.create(model="SmolLM2-135M-Instruct.Q4_1", prompt="Once upon a time",
                                           max_tokens=4000, stream=True, extra_body={"ignore_eos": True})
        chunks = iter(stream)
        next(chunks)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            for _ in chunks:
                pass
        except (httpx.HTTPError, openai.APIError):
            pass  # the connection is cut once the grace period is over
        assert proc.wait(60) == 0
        assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_flag_is_a_clear_error():
    r = subprocess.run([sys.executable, "-m", "ember.cli", "serve", "--port", "70000"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "--port 70000" in r.stderr and "Traceback" not in r.stderr
