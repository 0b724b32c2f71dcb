"""The HTTP ingress: Ray Serve LLM's ``OpenAiIngress``, open only to the API, with
OpenAI-shaped model errors.

Only the API may call serving (issue 16): serving answers for every organization and lists
every adapter in the bucket, while the API is where callers are authenticated and scoped to
their organization. Each route therefore first checks ``Authorization: Bearer <token>``
against the SHA-256 digest it was deployed with (``ServingConfig.api_token_sha256``); the
token itself never reaches the cluster. Every route Ray's ingress declares is overridden
here, and the routes the API never calls (embeddings, transcriptions, scoring,
tokenization) answer 404 even to the API: ``__init__`` refuses to start when Ray declares a
route this class does not know (``serving.ray_llm_private.ingress_routes``), so a Ray upgrade
cannot open an unchecked one.

A request body is parsed (by FastAPI, for the model's own routes) before the token is checked:
what such a 400 reveals is the public request schema, and Ray's HTTP proxy has read the body
by then anyway. No model, adapter or listing is reached without the token.

Ray's ingress answers an unknown model or adapter with FastAPI's ``{"detail": ...}``; OpenAI
clients expect ``{"error": {"message", "type", "param", "code"}}``, and the API process passes
serving's errors through, so this class reshapes them here, where they arise.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import HTTPException, Request
from ray.serve.llm.ingress import OpenAiIngress
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from starlette.responses import JSONResponse, Response

from contract.serving import SERVING_TOKEN_REFUSED, serving_token_digest
from serving.ray_llm_private import ingress_routes

SERVED_ROUTES = frozenset({"models", "model_data", "chat", "completions"})
"""The routes of Ray's ingress that serve the API; the others answer 404."""

REFUSED_ROUTES = frozenset({"embeddings", "transcriptions", "score", "tokenize", "detokenize"})
"""Routes Ray's ingress declares that openft does not offer (the API never calls them)."""


def openai_error(status_code: int, message: str, code: str | None = None,
                 param: str | None = None) -> JSONResponse:
    """An error response in OpenAI's shape; 404 without a code is ``model_not_found``."""
    if status_code == 404 and code is None:
        code, param = "model_not_found", "model"
    kind = ("authentication_error" if status_code == 401
            else "invalid_request_error")
    return JSONResponse(
        status_code=status_code,
        content={"error": {"message": message, "type": kind, "param": param, "code": code}},
    )


def bearer_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def authorized(request: Request, digest: str) -> bool:
    """Whether ``request`` carries the token whose SHA-256 is ``digest`` (constant time)."""
    token = bearer_token(request)
    return token is not None and hmac.compare_digest(serving_token_digest(token), digest)


def unauthorized() -> JSONResponse:
    return openai_error(401, "Serving answers only the openft API: the request carries no "
                        "valid serving token.", code=SERVING_TOKEN_REFUSED)


class OpenFTIngress(OpenAiIngress):
    """``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models`` of every base model,
    for callers that hold the serving token."""

    def __init__(self, *args: Any, api_token_sha256: str, **kwargs: Any) -> None:
        unknown = set(ingress_routes()) - SERVED_ROUTES - REFUSED_ROUTES
        if unknown:
            raise RuntimeError(f"Ray's ingress declares routes openft does not check: "
                               f"{sorted(unknown)}; add them to serving.ingress")
        super().__init__(*args, **kwargs)
        self._api_token_sha256 = api_token_sha256

    def _refuses(self, request: Request) -> bool:
        return not authorized(request, self._api_token_sha256)

    async def models(self, request: Request) -> Any:
        if self._refuses(request):
            return unauthorized()
        return await super().models()

    async def model_data(self, model: str, request: Request) -> Any:
        if self._refuses(request):
            return unauthorized()
        return await super().model_data(model)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        if self._refuses(request):
            return unauthorized()
        try:
            return await super().chat(body, request)
        except HTTPException as e:
            # Raised here for an unknown base model, and in the model replica (then wrapped
            # in a Ray error that still is an HTTPException) for an adapter missing in S3.
            return openai_error(e.status_code, str(e.detail))

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        if self._refuses(request):
            return unauthorized()
        try:
            return await super().completions(body, request)
        except HTTPException as e:
            return openai_error(e.status_code, str(e.detail))

    async def _not_offered(self, request: Request) -> Response:
        if self._refuses(request):
            return unauthorized()
        return openai_error(404, f"{request.url.path} is not offered by openft's serving.",
                            code="unknown_url")

    async def embeddings(self, request: Request) -> Response:
        return await self._not_offered(request)

    async def transcriptions(self, request: Request) -> Response:
        return await self._not_offered(request)

    async def score(self, request: Request) -> Response:
        return await self._not_offered(request)

    async def tokenize(self, request: Request) -> Response:
        return await self._not_offered(request)

    async def detokenize(self, request: Request) -> Response:
        return await self._not_offered(request)
