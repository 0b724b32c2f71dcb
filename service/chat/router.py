"""Chat and completions on the same base URL: authorize, rename, forward to serving.

The caller names a public model (a base id or ``ft:...``); serving knows only internal names
(``<base>:<model_key>``). Names are rewritten on the way in and back out, streamed chunks
included, so users never see an internal name.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service.deps import CallerDep, ContextDep, SessionDep
from service.errors import InvalidRequest, UpstreamUnavailable
from service.models import service as models

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post("/chat/completions")
async def chat_completions(request: Request, ctx: ContextDep, session: SessionDep,
                           caller: CallerDep) -> Response:
    return await _forward("/v1/chat/completions", request, ctx, session, caller)


@router.post("/completions")
async def completions(request: Request, ctx: ContextDep, session: SessionDep,
                      caller: CallerDep) -> Response:
    return await _forward("/v1/completions", request, ctx, session, caller)


async def _forward(path: str, request: Request, ctx, session, caller) -> Response:
    try:
        body: dict[str, Any] = json.loads(await request.body())
    except json.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise InvalidRequest("you must provide a model parameter", param="model")
    if "\x00" in body["model"]:  # PostgreSQL refuses NUL in text: say so instead of a 500
        raise InvalidRequest("Invalid value for 'model': NUL is not allowed.", param="model")
    public = body["model"]
    served = models.resolve(session, ctx.settings, caller, public, ctx.started_at)
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
    return JSONResponse(status_code=response.status_code, content=rename(payload))


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
