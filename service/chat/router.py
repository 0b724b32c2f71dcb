"""Chat and completions on the same base URL: authorize, rename, forward to serving.

The caller names a public model (a base id or ``ft:...``); serving knows only internal names
(``<base>:<model_key>``). Names are rewritten on the way in and back out, streamed chunks
included, so users never see an internal name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service.deps import CallerDep, ContextDep, DbDep
from service.errors import (
    HTTP_CODES,
    InvalidRequest,
    UpstreamRefused,
    UpstreamUnavailable,
    capped,
)
from service.models import service as models
from service.text import storable

router = APIRouter(prefix="/v1", tags=["inference"])
log = logging.getLogger(__name__)


@router.post("/chat/completions")
async def chat_completions(request: Request, ctx: ContextDep, db: DbDep,
                           caller: CallerDep) -> Response:
    return await _forward("/v1/chat/completions", request, ctx, db, caller)


@router.post("/completions")
async def completions(request: Request, ctx: ContextDep, db: DbDep,
                      caller: CallerDep) -> Response:
    return await _forward("/v1/completions", request, ctx, db, caller)


async def _forward(path: str, request: Request, ctx, db, caller) -> Response:
    body = _json_object(await request.body())
    public = _model(body)
    # The model is looked up in a unit of work of its own, done before serving is asked:
    # no connection is held for the generation's length (issue 16).
    served = await db.run(
        lambda s: models.resolve(s, ctx.settings, caller, public, ctx.started_at))
    if served.full_finetune:
        raise InvalidRequest(
            f"The model {public} is a full fine-tune: this deployment serves LoRA adapters on "
            "shared base models only. Its consolidated weights are in the bucket under "
            f"models/{served.internal.split(':', 1)[-1]}/ for a dedicated deployment.",
            param="model", code="model_not_servable")
    body["model"] = served.internal
    rename = _renamer(served.internal, public)

    upstream = ctx.serving.build_request("POST", path, json=body)
    try:
        response = await ctx.serving.send(upstream, stream=True)
    except httpx.TransportError:
        raise UpstreamUnavailable("The model server is not reachable; try again shortly.") \
            from None
    if response.status_code == 401:
        await response.aclose()
        log.error("serving refused the API's serving token: OPENFT_SERVING_TOKEN differs "
                  "from the one serving was deployed with")
        raise UpstreamRefused("The model server refused this deployment's serving token; "
                              "the operator must give the API the token serving was "
                              "deployed with (OPENFT_SERVING_TOKEN).")
    if body.get("stream") and response.status_code == 200:
        return StreamingResponse(_stream(response, rename), media_type="text/event-stream")
    try:
        content = await response.aread()
    finally:
        await response.aclose()
    try:
        payload = json.loads(content)
    except json.JSONDecodeError:
        raise UpstreamUnavailable("The model server answered with something unreadable.") \
            from None
    if response.status_code >= 400:
        payload = _error_envelope(response.status_code, payload)
    return JSONResponse(status_code=response.status_code, content=rename(payload))


class _NonFinite(ValueError):
    """``Infinity``, ``-Infinity`` or ``NaN``: Python's parser reads them; JSON has none."""


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(name)


def _json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or the 400 that says what is wrong with it.

    FastAPI does not read this body (the route takes the raw request), so its checks are
    here: not JSON, not UTF-8, nested past the parser's depth, or a number JSON has not.
    """
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except _NonFinite as e:
        param = _non_finite_param(raw)
        raise InvalidRequest(f"Invalid value{f' for {param!r}' if param else ''}: {e} is not "
                             "a JSON number.", param=param, code="invalid_value") from None
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") \
            from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_value")
    return body


def _non_finite_param(raw: bytes) -> str | None:
    """Where the first ``Infinity`` or ``NaN`` of a body sits (``logit_bias.42``); parsed
    again only for a body that holds one."""
    mark = object()

    def find(value: Any, path: tuple[str, ...]) -> str | None:
        if value is mark:
            return ".".join(path) or None
        items = (value.items() if isinstance(value, dict)
                 else enumerate(value) if isinstance(value, list) else ())
        return next((p for k, v in items if (p := find(v, (*path, str(k)))) is not None),
                    None)

    try:
        return find(json.loads(raw, parse_constant=lambda _: mark), ())
    except RecursionError:
        return None


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model",
                             code="invalid_value")
    if not isinstance(model, str):
        raise InvalidRequest("Invalid value for 'model': expected a string.", param="model",
                             code="invalid_value")
    try:
        return storable(model)
    except ValueError as e:
        raise InvalidRequest(f"Invalid value for 'model': {e}.", param="model",
                             code="invalid_value") from None


def _error_envelope(status: int, payload: Any) -> dict[str, Any]:
    """Serving's error in OpenAI's envelope with a code (Ray Serve's own errors carry none, or
    the HTTP status as a number; FastAPI's say ``detail``)."""
    error = payload.get("error", payload) if isinstance(payload, dict) else None
    error = error if isinstance(error, dict) else {}
    message = error.get("message") or error.get("detail") or "The model server refused it."
    code = error.get("code")
    return {"error": {
        "message": capped(str(message)),
        "type": str(error.get("type") or "invalid_request_error"),
        "param": error.get("param") if isinstance(error.get("param"), str) else None,
        "code": code if isinstance(code, str) and code else HTTP_CODES.get(status,
                                                                            "upstream_error"),
    }}


def _renamer(internal: str, public: str):
    def rename(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: rename(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [rename(v) for v in obj]
        if isinstance(obj, str) and internal in obj:
            return obj.replace(internal, public)
        return obj

    return rename


async def _stream(response: httpx.Response, rename) -> AsyncIterator[bytes]:
    try:
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                try:
                    line = "data: " + json.dumps(rename(json.loads(line[6:])))
                except json.JSONDecodeError:
                    pass
            yield (line + "\n").encode()
    finally:
        await response.aclose()
