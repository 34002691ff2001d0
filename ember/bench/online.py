"""`ember bench serve`: an async streaming client for any OpenAI-compatible server.

Every request streams (`stream: true`, asking for a final `usage` chunk). The client notes when
it sent the request, when each chunk carrying generated text arrived, and when the stream ended;
prompt and output token counts come from the `usage` chunk, or, when the server sends none, from
the bench's tokenizer over the prompt and the generated text. Anything but a clean HTTP 200
stream (connection refused, 4xx/5xx, an `error` event, a timeout) is a failed request, and every
failed request is kept in the results.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field

import httpx

from ember.bench.metrics import RequestResult
from ember.bench.workloads import Session, Turn, poisson_arrivals

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


@dataclass
class ClientConfig:
    base_url: str
    endpoint: str = "completions"
    model: str | None = None
    request_rate: float = math.inf
    max_concurrency: int | None = None
    ignore_eos: bool = False
    temperature: float = 0.0
    seed: int = 0
    timeout_s: float = 600.0
    api_key: str | None = None
    extra_body: dict = field(default_factory=dict)
    warmup_requests: int = 0       # untimed requests sent one by one before the run (cold starts are not load)
    chunk_marks: bool = True       # rag: documents as reusable chunks (Ember's extension), else plain text

    def validate(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"--endpoint {self.endpoint!r} is not one of: {', '.join(ENDPOINTS)}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"--base-url must start with http:// or https://, got {self.base_url!r}")
        if not self.request_rate > 0:
            raise ValueError(f"--request-rate must be positive (or inf), got {self.request_rate}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"--max-concurrency must be at least 1, got {self.max_concurrency}")


def root_url(base_url: str) -> str:
    """'http://h:p/v1/' -> 'http://h:p': endpoints are joined as /v1/..."""
    url = base_url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def make_client(cfg: ClientConfig) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    limits = httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency)
    # trust_env=False: a proxy from the environment must never sit between the bench and the server
    return httpx.AsyncClient(base_url=root_url(cfg.base_url), headers=headers, limits=limits, trust_env=False,
                             timeout=httpx.Timeout(cfg.timeout_s, connect=10.0))


async def served_model(client: httpx.AsyncClient) -> str:
    """The first model id that GET /v1/models lists."""
    resp = await client.get("/v1/models")
    resp.raise_for_status()
    data = resp.json().get("data") or []
    if not data:
        raise ValueError("the server's /v1/models lists no model; pass --model")
    return data[0]["id"]


def build_payload(cfg: ClientConfig, turn: Turn, history: list[dict], user: str | None) -> dict:
    """The JSON body of one request; `history` holds the earlier turns' messages (multi-turn)."""
    body: dict = {"model": cfg.model, "max_tokens": turn.output_len, "temperature": cfg.temperature,
                  "stream": True, "stream_options": {"include_usage": True}}
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    if user is not None:
        body["user"] = user
    docs = [d + "\n\n" for d in turn.documents]  # rag: each ends with its separator, so marks change no text
    if cfg.endpoint == "chat":
        system = [{"role": "system", "content": turn.system}] if turn.system else []
        content = turn.text
        if docs and cfg.chunk_marks:
            content = [{"type": "text", "text": d, "cache_control": {"type": "chunk"}} for d in docs]
            content.append({"type": "text", "text": turn.text})
        elif docs:
            content = "".join(docs) + turn.text
        body["messages"] = system + history + [{"role": "user", "content": content}]
    else:  # a raw prompt: history and system prompt are plain text before the new message
        parts = ([turn.system] if turn.system else []) + [m["content"] for m in history] + [turn.text]
        body["prompt"] = "\n\n".join(parts)
        if docs and cfg.chunk_marks:
            body["documents"] = docs
        elif docs:
            body["prompt"] = "".join(docs) + body["prompt"]
    body.update(turn.extra)
    body.update(cfg.extra_body)
    return body


def _chunk_text(chunk: dict, endpoint: str) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    if endpoint == "chat":
        return (choices[0].get("delta") or {}).get("content") or ""
    return choices[0].get("text") or ""


async def send_request(client: httpx.AsyncClient, cfg: ClientConfig, body: dict, result: RequestResult) -> None:
    """Stream one request into `result` (times, text, usage, error)."""
    pieces: list[str] = []
    result.start = time.perf_counter()
    try:
        async with client.stream("POST", ENDPOINTS[cfg.endpoint], json=body) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode("utf-8", "replace")[:300]
                result.error = f"HTTP {resp.status_code}: {detail}"
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, `event:` lines
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = f"error event: {json.dumps(chunk['error'])[:300]}"
                    return
                text = _chunk_text(chunk, cfg.endpoint)
                if text:
                    result.chunk_times.append(time.perf_counter())
                    pieces.append(text)
                usage = chunk.get("usage")
                if usage:
                    result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    result.output_tokens = int(usage.get("completion_tokens") or 0)
        result.success = True
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        result.end = time.perf_counter()
        result.generated_text = "".join(pieces)


def _fill_counts(result: RequestResult, body: dict, tokenizer) -> None:
    """Token counts for servers that send no usage chunk: tokenize what was sent and received."""
    if not result.success:
        return
    if not result.output_tokens and result.generated_text:
        result.output_tokens = (len(tokenizer.encode(result.generated_text, add_bos=False)) if tokenizer
                                else len(result.chunk_times))
    if not result.prompt_tokens and tokenizer is not None:
        sent = body["prompt"] if "prompt" in body else _chat_text(body["messages"], tokenizer)
        result.prompt_tokens = len(tokenizer.encode(sent, add_bos=False))


def _chat_text(messages: list[dict], tokenizer) -> str:
    """The messages as the model's chat template renders them (what a server tokenizes)."""
    if not tokenizer.chat_template:
        return "\n".join(m["content"] for m in messages)
    from ember.loader.chat_template import render_chat

    special = lambda i: tokenizer.token_text(i) if i is not None else ""  # noqa: E731
    return render_chat(tokenizer.chat_template, messages, True, bos_token=special(tokenizer.bos_token_id),
                       eos_token=special(tokenizer.eos_token_id))


WARMUP_TEXT = "Write one sentence about the sea."  # not from the workload: no run starts with its prompts cached


async def warm_up(client: httpx.AsyncClient, cfg: ClientConfig) -> None:
    """Send `cfg.warmup_requests` short requests one by one; a failure here stops the benchmark."""
    for _ in range(cfg.warmup_requests):
        result = RequestResult(False, 0.0)
        await send_request(client, cfg, build_payload(cfg, Turn(WARMUP_TEXT, 8, 16), [], None), result)
        if not result.success:
            raise ConnectionError(f"the warm-up request to {cfg.base_url} failed: {result.error}")


async def run_sessions(cfg: ClientConfig, sessions: list[Session], tokenizer=None, on_done=None) -> tuple[list[RequestResult], float]:
    """Send every turn of every session; returns the results (session order) and the run's duration."""
    cfg.validate()
    arrivals = poisson_arrivals(len(sessions), cfg.request_rate, cfg.seed)
    gate = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
    results: list[list[RequestResult]] = [[] for _ in sessions]
    async with make_client(cfg) as client:
        if cfg.model is None:
            try:
                cfg.model = await served_model(client)
            except (httpx.HTTPError, ValueError, KeyError, json.JSONDecodeError) as exc:
                raise ConnectionError(f"cannot ask {cfg.base_url} for its model ({type(exc).__name__}: {exc}); "
                                      "pass --model, and check the server is up") from None
        await warm_up(client, cfg)
        t0 = time.perf_counter()

        async def run_one(k: int, session: Session) -> None:
            if not session.sent_at(arrivals[k]):
                return  # an on/off tenant's request that arrives while it is off
            history: list[dict] = []
            due = t0 + arrivals[k]
            for t, turn in enumerate(session.turns):
                due += turn.think_time
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                body = build_payload(cfg, turn, history, session.user)
                result = RequestResult(False, 0.0, scheduled=due - t0, user=session.user, session=k, turn=t)
                if gate is not None:
                    async with gate:
                        await send_request(client, cfg, body, result)
                else:
                    await send_request(client, cfg, body, result)
                _fill_counts(result, body, tokenizer)
                results[k].append(result)
                if on_done is not None:
                    on_done(result)
                if not result.success:  # the conversation cannot go on without its reply: its later turns fail too
                    for later in range(t + 1, len(session.turns)):
                        now = time.perf_counter()
                        lost = RequestResult(False, now, scheduled=now - t0, end=now, user=session.user, session=k,
                                             turn=later, error="not sent: an earlier turn of its conversation failed")
                        results[k].append(lost)
                        if on_done is not None:
                            on_done(lost)
                    break
                history += [{"role": "user", "content": turn.text},
                            {"role": "assistant", "content": result.generated_text}]
                due = time.perf_counter()

        await asyncio.gather(*(run_one(k, s) for k, s in enumerate(sessions)))
        flat = [r for rs in results for r in rs]
        duration = (max(r.end for r in flat) - t0) if flat else 0.0
    for r in flat:  # times relative to the run's start, so JSON files read the same on any machine
        r.start -= t0
        r.end -= t0
        r.chunk_times = [c - t0 for c in r.chunk_times]
    return flat, duration
