"""The OpenAI-compatible HTTP API: the FastAPI app and its routes.

Handlers validate and tokenize (serve/inputs.py), hand the request to the AsyncEngine, and
turn its updates into response bodies or server-sent events (serve/outputs.py). A client
that goes away mid-request, streaming or not, aborts its request at once. `/` is the web
page (serve/web_page.py); `/stats.json` feeds its dashboard (serve/stats.py).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ember import __version__
from ember.engine.async_engine import AsyncEngine
from ember.serve.chat import handle_chat
from ember.serve.chunks import WarmChunksRequest, handle_warm
from ember.serve.completions import handle_completions
from ember.serve.context import ServeOptions, Served
from ember.serve.errors import install_error_handlers
from ember.serve.metrics import ServerMetrics
from ember.serve.middleware import ApiGuard
from ember.serve.protocol import ChatCompletionRequest, CompletionRequest
from ember.serve.stats import engine_config, snapshot
from ember.serve.web_page import mount_web_page


def build_app(engine: AsyncEngine, metrics: ServerMetrics, options: ServeOptions) -> FastAPI:
    served = Served(engine, metrics, options)

    @asynccontextmanager
    async def lifespan(app):
        yield
        engine.shutdown()  # after the graceful period: abort what is left, stop the thread

    app = FastAPI(title="Ember", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible API of the Ember inference engine.")
    install_error_handlers(app)
    app.state.served = served

    @app.get("/health")
    async def health():
        if not engine.is_alive():
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok"}

    @app.get("/version")
    async def version():
        return {"version": __version__}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    config = engine_config(engine.engine, options.model_names[0])

    @app.get("/stats.json")
    async def stats():
        """The dashboard's feed (serve/stats.py): public, like /metrics."""
        return JSONResponse(snapshot(engine.engine, metrics, config))  # plain json.dumps: no encoder pass

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": served.created, "owned_by": "ember",
             "max_model_len": served.max_model_len} for name in options.model_names[:1]]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await handle_completions(served, body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await handle_chat(served, body, request)

    @app.post("/v1/chunks")
    async def warm_chunks(body: WarmChunksRequest):
        return await handle_warm(served, body)

    mount_web_page(app)  # last: its /web mount must not shadow an API route

    return ApiGuard(app, options.api_key, options.max_request_bytes), app
