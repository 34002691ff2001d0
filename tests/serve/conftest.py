"""Real servers on free loopback ports, spoken to by the real `openai` client.

Each fixture serves the session's already loaded fp32 model through the same uvicorn server
class `ember serve` runs, on a thread of this process (loading the model again per server
would cost seconds each); `test_shutdown.py` runs the real `ember serve` command instead.
"""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import openai
import pytest

from ember.config import EngineConfig
from ember.serve.server import ServerConfig, _uvicorn_server, build_server_app


class RunningServer:
    def __init__(self, app, async_engine, port: int, api_key: str | None):
        self.app, self.async_engine, self.port, self.api_key = app, async_engine, port, api_key
        self.base_url = f"http://127.0.0.1:{port}"
        self.model = app.state.served.options.model_names[0]

    @property
    def engine(self):
        return self.async_engine.engine

    def client(self, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("api_key", self.api_key or "unused")
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 120)
        return openai.OpenAI(base_url=self.base_url + "/v1", **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(self.base_url + path, timeout=120, **kwargs)

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until the engine holds no request (aborts are processed by the engine thread)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            e = self.engine
            if not e.requests and not e.groups and e.kv.pool.num_used_blocks == 0 and not self.async_engine._streams:
                return
            time.sleep(0.02)
        raise AssertionError(f"engine not idle: {len(self.engine.requests)} requests, "
                             f"{self.engine.kv.pool.num_used_blocks} blocks held")


def assert_no_leak(server: RunningServer) -> None:
    server.wait_idle()
    pool = server.engine.kv.pool
    pool.check_consistency()
    assert pool.num_used_blocks == 0
    assert not server.engine.scheduler.running and not server.engine.scheduler.waiting


@contextlib.contextmanager
def running_server(loaded, api_key: str | None = None, max_request_bytes: str = "4MiB", max_waiting: int = 256,
                   profile: str | None = None, **engine_options):
    engine_options.setdefault("kv_cache_tokens", 8192)
    engine_options.setdefault("threads", 2)
    engine_cfg = EngineConfig(**engine_options)
    cfg = ServerConfig(port=0, api_key=api_key, max_request_bytes=max_request_bytes, max_waiting=max_waiting,
                       shutdown_timeout=5, log_level="warning", profile=profile)
    asgi, app, async_engine = build_server_app(engine_cfg, cfg, loaded=loaded)
    ready = {}
    server = _uvicorn_server(asgi, cfg, lambda port: ready.setdefault("port", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while "port" not in ready:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield RunningServer(app, async_engine, ready["port"], api_key)
    finally:
        server.should_exit = True
        thread.join(30)
        async_engine.shutdown()


@pytest.fixture(scope="session")
def server(ember_lm):
    with running_server(ember_lm, max_num_seqs=16) as s:
        yield s


@pytest.fixture(scope="session")
def make_server(ember_lm):
    """Start a server with other options (an API key, small limits): `with make_server(...) as s:`."""
    def make(**options):
        options.setdefault("kv_cache_tokens", 2048)
        return running_server(ember_lm, **options)
    return make


WEB_API_KEY = "web-page-test-key"


@pytest.fixture(scope="session")
def web_server(ember_lm):
    """A server with an API key, for the web page's tests: the page must ask for it and send it."""
    with running_server(ember_lm, api_key=WEB_API_KEY, max_num_seqs=8, kv_cache_tokens=4096) as s:
        yield s
