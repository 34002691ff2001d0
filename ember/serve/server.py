"""`ember serve`: load the engine, start its thread, serve the API with uvicorn, shut down cleanly.

SIGTERM or Ctrl-C stops admission (the listening socket closes), lets running requests finish
for up to `--shutdown-timeout` seconds, aborts the rest, and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass

from ember.config import EngineConfig, parse_bytes


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_name: str | None = None
    max_request_bytes: str = "4MiB"
    max_waiting: int = 256
    shutdown_timeout: float = 30.0
    log_level: str = "info"
    profile: str | None = None  # a CSV file that gets one row per engine step (engine/profile.py)
    tool_syntax: str = "auto"  # how tool calls are written (serve/tool_syntaxes)


def add_server_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("server options")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    g.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    g.add_argument("--api-key", default=os.environ.get("EMBER_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 routes (default: $EMBER_API_KEY, else none)")
    g.add_argument("--served-model-name", default=None,
                   help="the model name clients send and /v1/models reports (default: the model file's name)")
    g.add_argument("--max-request-bytes", default="4MiB", help="largest request body (default: 4MiB)")
    g.add_argument("--max-waiting", type=int, default=256,
                   help="requests allowed to wait before new ones get 503 (0: unbounded; default: 256)")
    g.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds running requests get to finish after SIGTERM (default: 30)")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    g.add_argument("--profile", default=None, metavar="FILE.csv",
                   help="write one CSV row per engine step (its phases' times and its batch) to FILE.csv, "
                        "until the server stops (default: off)")
    from ember.serve.tool_syntaxes import TOOL_SYNTAXES
    g.add_argument("--tool-syntax", default="auto", choices=["auto", *TOOL_SYNTAXES.names()],
                   help="how a chat template that renders tools itself expects tool calls written (default: auto, "
                        "detected from the template; templates without tools get a generic Hermes-style rendering)")


def server_config(args: argparse.Namespace) -> ServerConfig:
    cfg = ServerConfig(args.host, args.port, args.api_key, args.served_model_name, args.max_request_bytes,
                       args.max_waiting, args.shutdown_timeout, args.log_level, args.profile, args.tool_syntax)
    if not 0 <= cfg.port <= 65535:
        raise ValueError(f"--port {cfg.port} is not a port number (0..65535)")
    if cfg.max_waiting < 0:
        raise ValueError(f"--max-waiting must not be negative, got {cfg.max_waiting}")
    if cfg.shutdown_timeout < 0:
        raise ValueError(f"--shutdown-timeout must not be negative, got {cfg.shutdown_timeout}")
    parse_bytes(cfg.max_request_bytes)
    if cfg.profile:
        from ember.engine.profile import check_profile_path
        check_profile_path(cfg.profile)  # before the model loads
    return cfg


def model_names(path: str, served_model_name: str | None) -> list[str]:
    """What clients may call the model: the chosen name first, then the file name and the path."""
    stem = os.path.basename(os.path.normpath(path))
    stem = stem[:-5] if stem.endswith(".gguf") else stem
    names = [served_model_name] if served_model_name else []
    return list(dict.fromkeys(names + [stem, path]))


def build_server_app(engine_cfg: EngineConfig, cfg: ServerConfig, loaded=None, progress: bool = False):
    """The ASGI app and its AsyncEngine (started), for `serve` and for tests that serve in-process."""
    from ember.engine.async_engine import AsyncEngine
    from ember.engine.llm_engine import LLMEngine
    from ember.serve.context import ServeOptions
    from ember.serve.metrics import ServerMetrics
    from ember.serve.openai_api import build_app

    def make_engine() -> LLMEngine:
        engine = LLMEngine(engine_cfg, progress=progress, loaded=loaded)
        if cfg.profile:
            engine.profiler.enable(cfg.profile)  # the engine thread closes it when it stops
        return engine

    # loaded and stepped on one thread (AsyncEngine.started says why)
    async_engine = AsyncEngine.started(make_engine, cfg.max_waiting, make_observer=ServerMetrics)
    engine, metrics = async_engine.engine, async_engine.observer
    options = ServeOptions(model_names(engine.loaded.path, cfg.served_model_name), cfg.api_key,
                           parse_bytes(cfg.max_request_bytes), cfg.max_waiting, cfg.tool_syntax)
    asgi, app = build_app(async_engine, metrics, options)
    return asgi, app, async_engine


def _uvicorn_server(asgi, cfg: ServerConfig, on_ready):
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises SIGTERM after shutdown (exit status 143); a clean drain exits 0.
            if threading.current_thread() is not threading.main_thread():
                yield  # signals can only be caught on the main thread (tests serve from a thread)
                return
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                port = self.servers[0].sockets[0].getsockname()[1] if self.servers else cfg.port
                on_ready(port)

    config = uvicorn.Config(asgi, host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False,
                            timeout_graceful_shutdown=cfg.shutdown_timeout, lifespan="on")
    return Server(config)


def startup_report(engine) -> list[str]:
    """What the engine chose that a user did not spell out: each `auto` option's choice and why,
    then which path decode steps take and why."""
    lines = list(engine.auto_notes)
    off, decoder = engine.fused_decode_off_reason, engine.runner.decoder
    if off is not None:
        lines.append(f"decode steps: the PyTorch path ({off})")
    else:
        prefill = "prefill chunks too" if decoder.takes_prefill else "prefill chunks on the PyTorch path"
        lines.append(f"decode steps: fused, one C call per step ({prefill})")
    return lines


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc); None where that can't be read."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rpartition(")")[2].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def startup_line(parts: dict[str, float]) -> str:
    """'ready in 3.1 s: model 1.9 s, ...': the engine's timed parts, and what else went by since
    the process started (the interpreter, imports, the HTTP server)."""
    age = process_age_s()
    shown = [f"{name} {s:.1f} s" for name, s in parts.items()]
    if age is None:
        return "ready: " + ", ".join(shown)
    return f"ready in {age:.1f} s: " + ", ".join(shown + [f"Python, imports and HTTP {age - sum(parts.values()):.1f} s"])


def serve(engine_cfg: EngineConfig, cfg: ServerConfig) -> int:
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper()), format="%(asctime)s %(name)s %(message)s")
    print(f"loading {engine_cfg.model or 'the default model'} ...", file=sys.stderr, flush=True)
    asgi, app, async_engine = build_server_app(engine_cfg, cfg, progress=True)
    name = app.state.served.options.model_names[0]
    for line in startup_report(async_engine.engine):
        print(line, file=sys.stderr, flush=True)
    if cfg.profile:
        print(f"step profile: one row per engine step to {cfg.profile}", file=sys.stderr, flush=True)

    def on_ready(port: int) -> None:
        print(startup_line(async_engine.engine.startup_s), file=sys.stderr, flush=True)
        base = f"http://{cfg.host}:{port}"
        auth = f" -H 'Authorization: Bearer {cfg.api_key}'" if cfg.api_key else ""
        print(f"Ember is serving {name!r} at {base}/v1 (OpenAI-compatible); Ctrl-C stops it.\n"
              f"Chat and dashboard in a browser: {base}/\n"
              f"Try:\n  curl {base}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\\n"
              f"    -d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'",
              flush=True)

    server = _uvicorn_server(asgi, cfg, on_ready)
    try:
        server.run()
    finally:
        async_engine.shutdown()
    if not server.started:
        print(f"error: could not start the server on {cfg.host}:{cfg.port} (is the port in use?)", file=sys.stderr)
        return 1
    return 0
