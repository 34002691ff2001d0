"""What the route handlers share: the engine and its limits, fan-in of updates, disconnects."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from ember.engine.async_engine import AsyncEngine, EngineStoppedError, QueueFullError, RequestRejectedError
from ember.serve import outputs as out
from ember.serve.errors import OpenAIError, bad_request
from ember.serve.inputs import Prompt
from ember.serve.metrics import ServerMetrics


@dataclass
class ServeOptions:
    model_names: list[str]  # the first is the one reported; any is accepted
    api_key: str | None = None
    max_request_bytes: int = 4 * 2**20
    max_waiting: int = 256
    tool_syntax: str = "auto"  # serve/tool_syntaxes: "auto" reads it from the chat template


class Served:
    """What the handlers share: the engine, its tokenizer and limits."""

    def __init__(self, engine: AsyncEngine, metrics: ServerMetrics, options: ServeOptions):
        self.engine, self.metrics, self.options = engine, metrics, options
        e = engine.engine
        self.tokenizer, self.max_model_len, self.vocab_size = e.tokenizer, e.max_model_len, e.model_config.vocab_size
        self.names = out.TokenText(self.tokenizer)
        # structured outputs compile here, never on the engine thread (serve/structured.py)
        self.grammar_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ember-grammar")
        self.created = int(time.time())

    def model_name(self, requested: str | None) -> str:
        if requested is None or requested in self.options.model_names:
            return self.options.model_names[0]
        raise OpenAIError(404, f"the model {requested!r} does not exist; this server serves "
                               f"{self.options.model_names[0]!r}", param="model", code="model_not_found")

    def admit(self, num_prompts: int = 1) -> None:
        """503 before a response starts, rather than an error in the middle of a stream; a batch
        of prompts that could never wait at once is a 400 (retrying would not help)."""
        if not self.engine.accepting:
            raise OpenAIError(503, "the server is shutting down", code="shutting_down")
        limit, waiting = self.options.max_waiting, self.engine.num_waiting
        if limit and num_prompts > limit:
            raise bad_request(f"prompt holds {num_prompts} prompts; this server queues at most {limit} requests "
                              "(--max-waiting): send them in smaller batches", param="prompt")
        if limit and waiting + num_prompts > limit:
            raise OpenAIError(503, f"the waiting queue is full ({waiting} requests); retry later",
                              code="queue_full")


async def updates(served: Served, prompts: list[Prompt], params_list, request_id: str, user: str | None,
                  hints: dict | None = None):
    """(prompt index, update) from every prompt's request, as they come; closing aborts them all."""
    queue: asyncio.Queue = asyncio.Queue()
    arrival = time.monotonic()

    async def pump(i: int, prompt: Prompt, params):
        try:
            rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
            marks = {"chunk_spans": prompt.chunk_spans} if prompt.chunk_spans else {}
            async with aclosing(served.engine.generate(prompt.token_ids, params, rid, user, arrival,
                                                       {**(hints or {}), **marks})) as updates:
                async for update in updates:
                    await queue.put((i, update, None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await queue.put((i, None, exc))

    tasks = [asyncio.create_task(pump(i, p, params_list[i])) for i, p in enumerate(prompts)]
    try:
        remaining = len(prompts)
        while remaining:
            i, update, exc = await queue.get()
            if exc is not None:
                raise engine_error(exc)
            if update.finished:
                remaining -= 1
            yield i, update
    finally:
        # No await here: under a cancelled anyio scope (a dropped stream) it would raise again.
        # Cancelling is enough: each pump's generator posts its abort as it unwinds.
        for task in tasks:
            task.cancel()


def engine_error(exc: Exception) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, QueueFullError):
        return OpenAIError(503, str(exc), code="queue_full")
    if isinstance(exc, EngineStoppedError):
        return OpenAIError(503, str(exc), code="shutting_down")
    if isinstance(exc, RequestRejectedError):
        return bad_request(str(exc))
    return OpenAIError(500, str(exc), type="server_error")


async def until_disconnect(request: Request, work):
    """Run `work` (a coroutine) unless the client disconnects first; then cancel it (which aborts)."""
    task = asyncio.ensure_future(work)

    async def watch():
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    watcher.cancel()
    if task not in done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    return task.result()


def log_state(request: Request, request_id: str, prompt_tokens: int, completion_tokens: int, finish) -> None:
    request.state.request_id = request_id
    request.state.prompt_tokens = prompt_tokens
    request.state.completion_tokens = completion_tokens
    request.state.finish_reason = finish


async def respond(request: Request, job, stream: bool):
    """Server-sent events, or the whole body once done (499, for the log, if the client left first)."""
    if stream:
        return StreamingResponse(job.stream(), media_type="text/event-stream")
    result = await until_disconnect(request, job.collect())
    return Response(status_code=499) if result is None else result


def finish_summary(reasons) -> str:
    return ",".join(sorted({r or "none" for r in reasons}))


class Job:
    """One API request on its way through the engine: what both routes keep about it."""

    id_prefix = "req"

    def __init__(self, served: Served, body, request: Request, model: str):
        self.served, self.body, self.request, self.model = served, body, request, model
        self.request_id, self.created = f"{self.id_prefix}-{uuid.uuid4().hex}", int(time.time())
