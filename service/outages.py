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

log = logging.getLogger("openft.outages")

DATABASE_UNAVAILABLE = {
    "message": "The database is not reachable right now; nothing was changed. Try again "
               "shortly.",
    "type": "server_error", "param": None, "code": "database_unavailable",
}
POOL_EXHAUSTED = {
    "message": "The server is too busy to take this request now; nothing was changed. Try "
               "again shortly.",
    "type": "server_error", "param": None, "code": "server_busy",
}


def install_outage_handlers(app: FastAPI) -> None:
    async def _database(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database error, answered 503: %s", getattr(exc, "orig", None) or exc)
        return JSONResponse(status_code=503, content={"error": DATABASE_UNAVAILABLE},
                            headers={"Retry-After": "1"})

    for lost in (OperationalError, InterfaceError):
        app.add_exception_handler(lost, _database)

    @app.exception_handler(PoolTimeout)
    async def _pool(_: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("no database connection free in time, answered 503: %s", exc)
        return JSONResponse(status_code=503, content={"error": POOL_EXHAUSTED},
                            headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback by Starlette; the client gets the envelope, not text.
        return JSONResponse(status_code=500, content={"error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error", "param": None, "code": "internal_error"}})
