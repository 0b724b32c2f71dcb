"""The database away, as a client sees it: an enveloped 503 it may retry, never a plain-text
500 (issue 16).

SQLAlchemy raises ``OperationalError`` or ``InterfaceError`` when the server is unreachable,
restarting or drops the connection mid-request, and ``TimeoutError`` when no
pooled connection frees up in ``OPENFT_DB_POOL_TIMEOUT_S``. The request did nothing: its
transaction was rolled back, so a retry is safe. The driver's text stays in the log (it may
name the host or the user); the answer says only what happened.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service.errors import envelope

log = logging.getLogger("openft.outages")

RETRY_SOON = {"Retry-After": "1"}


def install_outage_handlers(app: FastAPI) -> None:
    async def _database(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database error, answered 503: %s", getattr(exc, "orig", None) or exc)
        return envelope(503, "The database is not reachable right now; nothing was changed. "
                        "Try again shortly.", None, "database_unavailable", "server_error",
                        RETRY_SOON)

    for lost in (OperationalError, InterfaceError):
        app.add_exception_handler(lost, _database)

    @app.exception_handler(PoolTimeout)
    async def _pool(_: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("no database connection free in time, answered 503: %s", exc)
        return envelope(503, "The server is too busy to take this request now; nothing was "
                        "changed. Try again shortly.", None, "server_busy", "server_error",
                        RETRY_SOON)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback by Starlette; the client gets the envelope, not text.
        return envelope(500, "The server had an error while processing your request.", None,
                        "internal_error", "server_error")
