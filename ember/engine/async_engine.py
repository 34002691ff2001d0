"""AsyncEngine: the synchronous LLMEngine stepped on its own thread, for the server.

The engine is not thread-safe, so only its thread touches it. HTTP handlers live on an
asyncio loop: they post commands (add, abort) to an inbox that the thread drains between
steps, and the thread hands each request's new tokens back through the handler's
asyncio.Queue with `loop.call_soon_threadsafe`. torch releases the GIL inside its kernels, so
the loop keeps serving while a step runs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from ember.engine.llm_engine import LLMEngine
from ember.request import Request
from ember.sampling_params import SamplingParams

log = logging.getLogger("ember.engine")


class QueueFullError(RuntimeError):
    """The waiting queue is at its limit: the caller should retry later (HTTP 503)."""


class EngineStoppedError(RuntimeError):
    """The engine is shutting down and takes no new requests (HTTP 503)."""


class RequestRejectedError(ValueError):
    """The engine refused the request's values (HTTP 400)."""


@dataclass
class SequenceDelta:
    """What one of a request's n sequences produced since the last update."""
    index: int
    token_ids: list[int]
    text: str
    logprobs: list  # (token, logprob, rank, [(id, logprob), ...]) per new token, when asked for
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestUpdate:
    deltas: list[SequenceDelta]
    finished: bool = False
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0  # over all sequences, so far
    prompt_logprobs: list | None = None  # set on the final update when asked for
    error: Exception | None = None


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    sent: dict[int, int] = field(default_factory=dict)  # sequence index -> tokens already sent
    finish_seen: set[int] = field(default_factory=set)  # sequence indexes whose finish was observed

    def push(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class EngineObserver:
    """Hooks the engine thread calls (metrics). Times are time.monotonic()."""

    def on_tokens(self, seq: Request, num_new: int, now: float) -> None: ...

    def on_finish(self, seq: Request, now: float) -> None: ...


class AsyncEngine:
    def __init__(self, engine: LLMEngine, max_waiting: int = 0, observer: EngineObserver | None = None):
        self.engine = engine
        self.max_waiting = max_waiting  # 0: unbounded
        self.observer = observer or EngineObserver()
        self._inbox: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}  # engine thread only
        self._num_posted = 0  # adds posted but not yet drained
        self._count_lock = threading.Lock()
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ember-engine", daemon=True)
        self._thread.start()

    @classmethod
    def started(cls, make_engine, max_waiting: int = 0, make_observer=None) -> "AsyncEngine":
        """`make_engine()` run on the thread that will then step it, started; its exception is
        raised here. Loading and stepping on one thread keep one OpenMP team: a second thread
        with its own team (loading on the main thread, stepping on this one) doubles the
        process's OpenMP threads, libgomp then stops spinning between parallel regions, and a
        decode step of hundreds of short regions ran ~3x slower on 2 cores (benchmarks/README.md)."""
        box, ready = {}, threading.Event()

        def run() -> None:
            try:
                engine = make_engine()
                box["self"] = self = cls(engine, max_waiting, make_observer(engine) if make_observer else None)
                self._thread = threading.current_thread()
            except BaseException as exc:  # noqa: BLE001  (handed to the caller, raised there)
                box["error"] = exc
                return
            finally:
                ready.set()
            self._run()

        threading.Thread(target=run, name="ember-engine", daemon=True).start()
        ready.wait()
        if "error" in box:
            raise box["error"]
        return box["self"]

    def stop_accepting(self) -> None:
        self._accepting = False

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort whatever still runs, then stop the thread."""
        self._accepting = False
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def accepting(self) -> bool:
        return self._accepting

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def num_waiting(self) -> int:
        """Requests not yet running: in the scheduler's queue or still in the inbox."""
        return len(self.engine.scheduler.waiting) + self._num_posted

    # --- the handlers' side -------------------------------------------------------------------
    async def generate(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str,
                       user: str | None = None, arrival_time: float | None = None,
                       hints: dict | None = None) -> AsyncIterator[RequestUpdate]:
        """Updates for one request until it finishes; leaving early (close, cancel) aborts it.
        `hints`: LLMEngine.add_request's scheduling keywords (priority, slo_ttft_ms, ...)."""
        if not self._accepting:
            raise EngineStoppedError("the server is shutting down")
        waiting = self.num_waiting
        if self.max_waiting and waiting >= self.max_waiting:
            raise QueueFullError(f"the waiting queue is full ({waiting} requests); retry later")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._count_lock:
            self._num_posted += 1
        self._post(("add", request_id, prompt_token_ids, params, user, arrival_time or time.monotonic(),
                    hints or {}, stream))
        finished = False
        try:
            while True:
                update = await stream.queue.get()
                if update.error is not None:
                    finished = True
                    raise update.error
                finished = update.finished
                yield update
                if finished:
                    return
        finally:
            if not finished:
                self._post(("abort", request_id))

    async def run_in_engine(self, fn):
        """fn(engine) on the engine thread, between steps (the engine is not thread-safe); its
        result, or its exception raised here."""
        if not self._accepting:
            raise EngineStoppedError("the server is shutting down")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._post(("call", fn, loop, future))
        return await future

    def _call(self, fn, loop, future) -> None:
        def settle(method, value):
            if not future.done():  # the caller may have gone away
                method(value)
        try:
            result = fn(self.engine)
        except Exception as exc:
            loop.call_soon_threadsafe(settle, future.set_exception, exc)
        else:
            loop.call_soon_threadsafe(settle, future.set_result, result)

    def _post(self, command) -> None:
        self._inbox.append(command)
        self._wake.set()

    # --- the engine thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._drain()
            if self._stop:
                self._abort_all("abort")
                self.engine.profiler.disable()  # only this thread steps the engine: the profile ends whole
                return
            if not self.engine.has_unfinished():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                self._publish(self.engine.step())
            except Exception as exc:  # never let one bad step kill the server: fail its requests
                log.exception("engine step failed")
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._fail_all(exc)

    def _drain(self) -> None:
        while self._inbox:
            command = self._inbox.popleft()
            if command[0] == "add":
                self._add(*command[1:])
            elif command[0] == "call":
                self._call(*command[1:])
            else:
                self._abort(command[1])

    def _add(self, request_id, ids, params, user, arrival_time, hints: dict, stream: _Stream) -> None:
        with self._count_lock:
            self._num_posted -= 1
        try:
            hints = dict(hints)
            prompt = {"prompt_token_ids": ids, "chunk_spans": hints.pop("chunk_spans", [])}
            self.engine.add_request(prompt, params, request_id=request_id, user=user, **hints)
        except ValueError as exc:
            stream.push(RequestUpdate([], error=RequestRejectedError(str(exc))))
            return
        except Exception as exc:  # a bug must fail this request, not end the engine thread
            log.exception("adding request %s failed", request_id)
            stream.push(RequestUpdate([], error=exc))
            return
        for seq in self.engine.groups[request_id]:
            seq.metrics.arrival_time = arrival_time  # queue time counts from the HTTP request
        self._streams[request_id] = stream

    def _abort(self, request_id: str) -> None:
        """The client went away: free its blocks now."""
        if request_id in self._streams:
            del self._streams[request_id]
            seqs = self.engine.groups.get(request_id, [])
            self.engine.abort_request(request_id)
            now = time.monotonic()
            for seq in seqs:
                self.observer.on_finish(seq, now)
            self.engine.release(request_id)

    def _publish(self, changed: list[Request]) -> None:
        now = time.monotonic()
        for group_id in dict.fromkeys(seq.group_id for seq in changed):
            stream = self._streams.get(group_id)
            seqs = self.engine.groups.get(group_id)
            if stream is None or seqs is None:
                continue
            update = self._update(seqs, stream, now)
            if update.finished:
                del self._streams[group_id]
                self.engine.release(group_id)
            stream.push(update)

    def _update(self, seqs: list[Request], stream: _Stream, now: float) -> RequestUpdate:
        deltas = []
        for seq in seqs:
            sent = stream.sent.get(seq.index, 0)
            new = seq.output_token_ids[sent:]
            text = self.engine.text_state(seq).take_delta(seq.is_finished)
            if not new and not text and not seq.is_finished:
                continue
            if new:
                self.observer.on_tokens(seq, len(new), now)
            if seq.is_finished and seq.index not in stream.finish_seen:
                self.observer.on_finish(seq, now)
                stream.finish_seen.add(seq.index)
            logprobs = seq.output_logprobs[sent:] if seq.params.logprobs is not None else []
            stream.sent[seq.index] = len(seq.output_token_ids)
            deltas.append(SequenceDelta(seq.index, list(new), text, list(logprobs), seq.finish_reason, seq.stop_reason))
        finished = all(s.is_finished for s in seqs)
        first = seqs[0]
        update = RequestUpdate(deltas, finished, first.num_prompt_tokens, sum(len(s.output_token_ids) for s in seqs))
        if finished and first.params.prompt_logprobs is not None:
            update.prompt_logprobs = list(first.prompt_logprobs)
        return update

    def _fail_all(self, exc: Exception) -> None:
        for group_id, stream in list(self._streams.items()):
            self.engine.abort_request(group_id)
            self.engine.release(group_id)
            stream.push(RequestUpdate([], error=RuntimeError(f"the engine failed: {exc}")))
        self._streams.clear()

    def _abort_all(self, reason: str) -> None:
        """Shutdown: every request still running ends now, with finish_reason 'abort'."""
        now = time.monotonic()
        for group_id, stream in list(self._streams.items()):
            seqs = self.engine.groups.get(group_id, [])
            self.engine.abort_request(group_id)
            update = self._update(seqs, stream, now) if seqs else RequestUpdate([], True)
            update.finished = True
            self.engine.release(group_id)
            stream.push(update)
        self._streams.clear()
