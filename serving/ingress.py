"""The HTTP ingress: Ray Serve LLM's ``OpenAiIngress`` with OpenAI-shaped model errors.

Ray's ingress answers an unknown model or adapter with FastAPI's ``{"detail": ...}``; OpenAI
clients expect ``{"error": {"message", "type", "param", "code"}}``, and the API process passes
serving's errors through, so this class reshapes them here, where they arise.
"""

from __future__ import annotations

from fastapi import HTTPException, Request
from ray.serve.llm.ingress import OpenAiIngress
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from starlette.responses import JSONResponse, Response


def openai_error(status_code: int, message: str) -> JSONResponse:
    """An error response in OpenAI's shape; 404 is OpenAI's ``model_not_found``."""
    not_found = status_code == 404
    return JSONResponse(
        status_code=status_code,
        content={
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": "model" if not_found else None,
                "code": "model_not_found" if not_found else None,
            }
        },
    )


class OpenFTIngress(OpenAiIngress):
    """``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models`` of every base model."""

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        try:
            return await super().chat(body, request)
        except HTTPException as e:
            # Raised here for an unknown base model, and in the model replica (then wrapped
            # in a Ray error that still is an HTTPException) for an adapter missing in S3.
            return openai_error(e.status_code, str(e.detail))

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        try:
            return await super().completions(body, request)
        except HTTPException as e:
            return openai_error(e.status_code, str(e.detail))
