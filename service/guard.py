"""The key and the body size, checked before a request's body is read.

FastAPI parses a multipart form before any dependency runs: without this guard an
unauthenticated 200 MB upload is spooled to a temp file before its 401, and the upload limit
is checked only once the whole body has arrived. :class:`RequestGuard` is plain ASGI (not
``BaseHTTPMiddleware``, which costs every request a task and a queue) and answers from the
headers alone: a wrong key gets its 401 before a body byte is read, a ``Content-Length`` over
the limit its 413 at once, and a body that declares no length is counted as it streams and
cut off with the same 413 the moment it passes the limit. The routes' own ``CallerDep`` still
runs: this only refuses earlier, it grants nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import KeyRing
from service.errors import APIError, AuthenticationFailed, PayloadTooLarge

log = logging.getLogger("openft")

GUARDED_PREFIX = "/v1/"
"""Every OpenAI route; ``/healthz``, ``/readyz`` and ``/metrics`` take no key."""

FORM_MARGIN_BYTES = 64 * 1024
"""Room over ``max_upload_bytes`` for the multipart envelope (boundaries, part headers, the
``purpose`` field): the limit is on the file, and the route checks the file's exact size."""


def body_limit(max_upload_bytes: int) -> int:
    """The most body bytes any guarded request may carry.

    >>> body_limit(100)
    65636
    """
    return max_upload_bytes + FORM_MARGIN_BYTES


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, or None when it sends none (chunked) or garbage
    (the server refuses that itself).

    >>> declared_length({"headers": [(b"content-length", b"12")]})
    12
    >>> declared_length({"headers": [(b"transfer-encoding", b"chunked")]}) is None
    True
    """
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def authorization(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return value.decode("latin-1")
    return None


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is over the limit of {limit} bytes for a file upload "
        f"({limit - FORM_MARGIN_BYTES} bytes of file plus the form around it).",
        param="file")


async def answer(error: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    """The error in OpenAI's envelope, as the app's exception handler writes it."""
    headers = {"WWW-Authenticate": "Bearer"} if error.status_code == 401 else None
    # The body is left unread: close the connection rather than drain it for keep-alive.
    headers = {**(headers or {}), "Connection": "close"}
    await JSONResponse(error.body(), status_code=error.status_code, headers=headers)(
        scope, receive, send)


CALLER_STATE = "caller"
"""Where the guard leaves the authenticated :class:`~service.auth.Caller`
(``request.state.caller``)."""


class RequestGuard:
    """ASGI middleware: authenticate and bound the body of every ``/v1/`` request before the
    app reads it. The key ring and the limit come from the context the lifespan put on
    ``app.state.ctx`` (``scope["app"]``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = _context(scope)
        if scope["type"] != "http" or ctx is None or not scope["path"].startswith(
                GUARDED_PREFIX):
            await self.app(scope, receive, send)
            return
        keys: KeyRing = ctx.keys
        try:
            caller = keys.authenticate(authorization(scope))
        except AuthenticationFailed as e:
            await answer(e, scope, receive, send)
            return
        # The routes' CallerDep reads it from request.state: one authentication a request.
        scope.setdefault("state", {})[CALLER_STATE] = caller
        limit = body_limit(ctx.settings.max_upload_bytes)
        length = declared_length(scope)
        if length is not None and length > limit:
            await answer(too_large(limit), scope, receive, send)
            return
        await _CountedBody(self.app, limit)(scope, receive, send)


class _CountedBody:
    """One request whose body is counted as the app reads it: past ``limit`` the client gets
    the 413, the app gets a disconnect, and whatever the app answers then is dropped."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.received = 0
        self.started = False
        self.cut_off = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_receive() -> Message:
            if self.cut_off:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    self.cut_off = True
                    if not self.started:
                        await answer(too_large(self.limit), scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if self.cut_off:
                return  # the 413 went out (or the answer had begun): nothing more fits
            if message["type"] == "http.response.start":
                self.started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not self.cut_off:
                raise
            # The app failed reading a body it was told had gone; the client has its 413.
            log.debug("request cut off at %d bytes", self.received, exc_info=True)


def _context(scope: Scope) -> Any:
    """``app.state.ctx`` once the lifespan has built it; None before (nothing to check
    against, and no route could answer either)."""
    app = scope.get("app")
    return getattr(getattr(app, "state", None), "ctx", None)
