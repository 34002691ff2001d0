"""Raw ASGI middleware in front of the API: bearer-token check, body-size limit, access log.

It runs before FastAPI parses anything, so an oversized or unauthorised body is refused
without being read whole. The access log is one line per request, written when the last
byte of the response (or the stream) has gone out.
"""

from __future__ import annotations

import hmac
import logging
import time

from ember.serve.errors import error_bytes

access_log = logging.getLogger("ember.access")
# Polled once a second by an open dashboard (serve/web/): logged at debug level when they
# succeed, so that a watched dashboard does not bury the requests in the log.
QUIET_PATHS = frozenset({"/stats.json"})


class ApiGuard:
    def __init__(self, app, api_key: str | None = None, max_request_bytes: int = 0):
        self.app, self.api_key, self.max_request_bytes = app, api_key, max_request_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 0}

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._log(scope, status["code"], start)

        path = scope.get("path", "")
        if self.api_key and path.startswith("/v1") and not self._authorised(scope):
            return await _reply(send_logged, 401, "invalid or missing API key (send Authorization: Bearer KEY)",
                                "invalid_api_key")
        if self.max_request_bytes and scope.get("method") in ("POST", "PUT", "PATCH"):
            body, too_big = await self._read_body(scope, receive)
            if too_big:
                return await _reply(send_logged, 413, f"the request body is over {self.max_request_bytes} bytes",
                                    "request_too_large")
            receive = _replay(body, receive)
        await self.app(scope, receive, send_logged)

    def _authorised(self, scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                given = value.decode("latin-1")
                return hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode())
        return False

    async def _read_body(self, scope, receive) -> tuple[bytes, bool]:
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_request_bytes:
                return b"", True
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_request_bytes:
                return b"", True
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False

    def _log(self, scope, status: int, start: float) -> None:
        state = scope.get("state") or {}
        client = scope.get("client") or ("-", 0)
        fields = [f"{client[0]}", f'"{scope.get("method")} {scope.get("path")}"', str(status),
                  f"{(time.perf_counter() - start) * 1000:.1f}ms"]
        for key in ("request_id", "prompt_tokens", "completion_tokens", "finish_reason"):
            if key in state:
                fields.append(f"{key}={state[key]}")
        quiet = scope.get("path") in QUIET_PATHS and status < 400
        access_log.log(logging.DEBUG if quiet else logging.INFO, " ".join(fields))


def _replay(body: bytes, receive):
    """A receive() that hands the already-read body over once, then waits for disconnect as usual."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replayed


async def _reply(send, status: int, message: str, code: str) -> None:
    body = error_bytes(status, message, code)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
