"""Fixtures of the bench tests: the default model's tokenizer, free loopback ports, a real `ember serve`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def bench_tokenizer():
    from ember.bench.corpus import load_tokenizer
    from ember.loader.errors import ModelLoadError

    try:
        return load_tokenizer()
    except ModelLoadError as exc:
        pytest.skip(f"default model not installed: {exc}")


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ember_cmd() -> list[str]:
    return [sys.executable, "-m", "ember.cli"]


@pytest.fixture(scope="module")  # only one module needs it; it should not idle through the rest of a run
def ember_server(tmp_path_factory):
    """`ember serve` as a subprocess on a free loopback port; yields its base URL; killed after."""
    import importlib.util

    if importlib.util.find_spec("ember.serve") is None:
        pytest.skip("ember serve is not in this checkout yet (issue 4)")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(ember_cmd() + ["serve", "--host", "127.0.0.1", "--port", str(port),
                                               "--max-num-seqs", "8", "--kv-cache-tokens", "8192", "--threads", "2"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # model load on a busy 2-core machine; bounded
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ember serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2.0, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ember serve was not healthy after 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
