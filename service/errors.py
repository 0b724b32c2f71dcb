"""Domain errors, raised where a problem is found, and the one handler that shapes them.

Every error leaves the API as OpenAI's envelope:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import RequestResponseEndpoint


class APIError(Exception):
    status_code = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
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


def _envelope(status: int, message: str, param: str | None, code: str | None, type_: str):
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": type_, "param": param, "code": code}},
    )


def _param(error: Mapping[str, Any], body: Any) -> str | None:
    """The request field a validation error is about, named as OpenAI does (``a.b.0``).

    pydantic also puts union members' tags (``literal['auto']``, ``constrained-int``) in the
    location; walking the request body along it tells field names from those tags.
    """
    source, *rest = error.get("loc") or (None,)
    if source != "body":
        return ".".join(map(str, rest)) or None
    names: list[str] = []
    value = body
    for i, part in enumerate(rest):
        missing = i == len(rest) - 1 and error.get("type") == "missing"
        if isinstance(value, Mapping) and (part in value or missing):
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            break
        names.append(str(part))
    return ".".join(names) or None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(status_code=exc.status_code, content=exc.body(), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        params = [_param(e, exc.body) for e in errors]
        param = params[0] if errors else None
        # A union field (`"auto" | int`) fails once per member: say what each would take.
        same = (e["msg"] for e, p in zip(errors, params, strict=True) if p == param)
        msg = " or ".join(dict.fromkeys(same)) or "Invalid request"
        message = f"Invalid value for '{param}': {msg}" if param else msg
        return _envelope(400, message, param, "invalid_value", "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return _envelope(exc.status_code, str(exc.detail), None, code, "invalid_request_error")

    @app.middleware("http")
    async def _refuse_nul(request: Request, call_next: RequestResponseEndpoint) -> Response:
        # No id, cursor or filter holds NUL, and PostgreSQL fails on any text that does (a 500).
        bad = [k for k, v in request.query_params.multi_items() if "\x00" in k + v]
        if bad or "\x00" in request.url.path:
            where = f"'{bad[0]}'" if bad else "the path"
            return _envelope(400, f"Invalid value in {where}: NUL (%00) is not allowed.",
                             bad[0] if bad else None, "invalid_value", "invalid_request_error")
        return await call_next(request)
