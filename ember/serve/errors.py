"""Errors as the OpenAI API shapes them: `{"error": {"message", "type", "param", "code"}}`.

Every failure a client can cause maps to a 4xx with this body, and anything unexpected to a
500 with the same shape: a client never sees a stack trace.
"""

from __future__ import annotations

import json
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("ember.serve")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 503: "service_unavailable_error"}


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param, code)


def error_bytes(status: int, message: str, code: str | None = None) -> bytes:
    """The JSON body, for the raw ASGI middleware that answers before FastAPI runs."""
    return json.dumps(OpenAIError(status, message, code=code).body()).encode()


_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|[a-z-]+\[.*\])$")


def _field_path(loc) -> list[str]:
    """pydantic's error location as OpenAI names a field: messages[0].content, without the
    type tags pydantic adds inside a union (prompt.list[int].1 -> prompt[1])."""
    out: list[str] = []
    for x in loc:
        if x == "body" and not out or isinstance(x, str) and _UNION_TAG.match(x):
            continue
        if isinstance(x, int) and out:
            out[-1] += f"[{x}]"
        else:
            out.append(str(x))
    return out


def _validation_error(exc: RequestValidationError) -> OpenAIError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = _field_path(first.get("loc", ()))
    kind = first.get("type", "")
    if kind == "json_invalid":
        return bad_request(f"the request body is not valid JSON: {first.get('msg', '')}", code="invalid_json")
    if not loc and kind in ("model_attributes_type", "dict_type"):
        return bad_request("the request body must be a JSON object (send Content-Type: application/json)",
                           code="invalid_json")
    if kind == "extra_forbidden":
        return bad_request(f"unknown field {'.'.join(loc)!r}", param=".".join(loc) or None, code="unknown_parameter")
    if kind == "missing":
        return bad_request(f"missing required field {'.'.join(loc)!r}", param=".".join(loc) or None)
    param = ".".join(loc) or None
    where = f"{param}: " if param else ""
    return bad_request(f"{where}{first.get('msg', 'invalid value')}", param=param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai(request: Request, exc: OpenAIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = f"no route {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return OpenAIError(exc.status_code, message).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return OpenAIError(500, f"internal error: {type(exc).__name__}", type="server_error").response()
