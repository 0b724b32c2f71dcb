"""Domain errors, raised where a problem is found, and the one handler that shapes them.

Every error leaves the API as OpenAI's envelope:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

ECHO_LIMIT = 256
"""The most characters of one request value an error repeats back (a 1 MB model name is
answered with its first 256 and an ellipsis)."""
MESSAGE_LIMIT = 1024
_LONG_RUN = re.compile(rf"\S{{{ECHO_LIMIT + 1},}}")


def capped(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` with each unbroken run over :data:`ECHO_LIMIT` characters (an echoed id, name
    or key) cut to that many plus an ellipsis, and the whole to ``limit`` plus one.

    >>> capped("No model " + "m" * 1000 + " here.") == "No model " + "m" * 256 + "… here."
    True
    """
    if len(text) <= ECHO_LIMIT:
        return text
    text = _LONG_RUN.sub(lambda m: m.group()[:ECHO_LIMIT] + "…", text)
    return text if len(text) <= limit else text[:limit] + "…"


class APIError(Exception):
    status_code = 400
    type = "invalid_request_error"
    code: str = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = capped(message)
        self.param = None if param is None else capped(param, ECHO_LIMIT)
        if code is not None:
            self.code = code

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(APIError):
    status_code = 400


class NotFound(APIError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str, param: str | None = "model"):
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.", param=param
        )


class AuthenticationFailed(APIError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(APIError):
    status_code = 403
    code = "permission_denied"


class PayloadTooLarge(APIError):
    status_code = 413
    code = "file_too_large"


class Conflict(APIError):
    """A request that the object's current state forbids.

    Answered 400 rather than 409: the official SDK retries 409 as if it were transient.
    """

    status_code = 400


class UpstreamUnavailable(APIError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"


class UpstreamRefused(APIError):
    """Serving refused the API itself (its serving token): the deployment's fault, never the
    caller's, so not serving's 401 passed on as if the caller's key were wrong."""

    status_code = 502
    type = "server_error"
    code = "serving_token_refused"


def envelope(status: int, message: str, param: str | None, code: str, type_: str,
              headers: dict[str, str] | None = None) -> JSONResponse:
    error = {"message": capped(message), "type": type_,
             "param": None if param is None else capped(param, ECHO_LIMIT), "code": code}
    return JSONResponse(status_code=status, content={"error": error}, headers=headers)


HTTP_CODES = {400: "invalid_request", 401: "invalid_api_key", 403: "permission_denied",
              404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
              415: "unsupported_media_type", 422: "invalid_value", 429: "rate_limit_exceeded"}
"""``code`` of the errors Starlette and FastAPI raise themselves (an unknown route, a wrong
method, a body that cannot be read), by status."""


def _param(error: Mapping[str, Any], body: Any) -> str | None:
    """The request field a validation error is about, named as OpenAI does (``a.b.0``).

    pydantic also puts union members' tags (``literal['auto']``, ``constrained-int``) in the
    location; walking the request body along it tells field names from those tags. A bad
    mapping key (``[key]`` after it) names the mapping: the key may be the bad part.
    """
    source, *rest = error.get("loc") or (None,)
    if source != "body":
        return ".".join(map(str, rest)) or None
    names: list[str] = []
    value = body
    for i, part in enumerate(rest):
        missing = i == len(rest) - 1 and error.get("type") == "missing"
        if rest[i + 1:i + 2] == ["[key]"]:
            break
        if isinstance(value, Mapping) and (part in value or missing):
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            break
        names.append(str(part))
    return ".".join(names) or None


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return envelope(400, "The request body is not valid JSON.", None, "invalid_json",
                         "invalid_request_error")
    if isinstance(exc.body, bytes):  # FastAPI parses JSON only when the body says it is JSON
        return envelope(400, "The request body must be a JSON object, sent with "
                         "'Content-Type: application/json'.", None, "invalid_value",
                         "invalid_request_error")
    params = [_param(e, exc.body) for e in errors]
    param = params[0] if errors else None
    # A union field (`"auto" | int`) fails once per member: say what each would take.
    same = (e["msg"] for e, p in zip(errors, params, strict=True) if p == param)
    msg = " or ".join(dict.fromkeys(same)) or "Invalid request"
    message = f"Invalid value for '{param}': {msg}" if param else msg
    return envelope(400, message, param, "invalid_value", "invalid_request_error")


def _http_error(exc: StarletteHTTPException) -> JSONResponse:
    # FastAPI's only own 400: a JSON body it could not decode (not UTF-8, nested too deep).
    unreadable = exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError)
    message = "The request body is not valid JSON." if unreadable else str(exc.detail)
    code = "invalid_json" if unreadable else HTTP_CODES.get(exc.status_code, "invalid_request")
    return envelope(exc.status_code, message, None, code, "invalid_request_error",
                     headers=getattr(exc, "headers", None))


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(status_code=exc.status_code, content=exc.body(), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _http_error(exc)

    app.add_middleware(RefuseOddRequests)


class RefuseOddRequests:
    """ASGI middleware: a 400 or 401 for what no route should have to think about.

    - NUL in the path or the query: no id, cursor or filter holds one, and PostgreSQL fails
      on any text that does (a 500).
    - A query key given twice (``?limit=1&limit=2``): which one counts would be a guess.
    - Two ``Authorization`` headers: the key that acts would be a guess too.

    Plain ASGI, not ``BaseHTTPMiddleware`` (which costs every request a task and a queue),
    and cheap on ordinary requests: the raw query is decoded only when it could hold NUL.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = _odd_request(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _odd_request(scope: Scope) -> JSONResponse | None:
    if "\x00" in scope["path"]:
        return _nul_in("the path", None)
    query: bytes = scope.get("query_string", b"")
    if query:
        if b"%00" in query or b"\x00" in query:
            keys = [k for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
                    if "\x00" in k + v]
            if keys:
                return _nul_in(f"'{keys[0]}'", keys[0])
        twice = _repeated_key(query)
        if twice is not None:
            return envelope(400, f"The query parameter '{twice}' is given more than once.",
                             twice, "invalid_value", "invalid_request_error")
    if sum(name == b"authorization" for name, _ in scope["headers"]) > 1:
        return envelope(401, "Send one Authorization header, not several.", None,
                         AuthenticationFailed.code, AuthenticationFailed.type,
                         headers={"WWW-Authenticate": "Bearer"})
    return None


def _nul_in(where: str, param: str | None) -> JSONResponse:
    return envelope(400, f"Invalid value in {where}: NUL (%00) is not allowed.", param,
                     "invalid_value", "invalid_request_error")


def _repeated_key(query: bytes) -> str | None:
    """The first query key given more than once, decoded (``l%69mit`` is ``limit``).

    >>> _repeated_key(b"limit=1&after=x"), _repeated_key(b"limit=1&l%69mit=2")
    (None, 'limit')
    """
    seen: set[bytes] = set()
    for pair in query.split(b"&"):
        key = pair.partition(b"=")[0]
        if b"%" in key or b"+" in key:
            key = unquote_to_bytes(key.replace(b"+", b" "))
        if key in seen:
            return key.decode("utf-8", "replace")
        if key:
            seen.add(key)
    return None
