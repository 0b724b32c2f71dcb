"""Typed dependencies: what a route needs, taken from ``app.state`` built in the lifespan."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.auth import Caller
from service.context import AppContext
from service.db import Database
from service.guard import CALLER_STATE

T = TypeVar("T")


async def get_context(request: Request) -> AppContext:
    # Async, as every dependency without I/O: FastAPI runs a sync one on a pool thread.
    return request.app.state.ctx


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_caller(request: Request, ctx: ContextDep,
                     authorization: Annotated[str | None, Header()] = None) -> Caller:
    """The caller the request guard authenticated before the body was read
    (``service.guard``); a route the guard does not cover authenticates here."""
    # Async: a hash and a compare, no I/O; a thread hop would cost more than the work.
    caller = getattr(request.state, CALLER_STATE, None)
    return caller if caller is not None else ctx.keys.authenticate(authorization)


class Transactions:
    """A route's database work as one call on the request thread pool: the session is
    opened, used, committed (or rolled back) and its connection returned within that call.

    Routes using it are ``async``: FastAPI then serializes their answer on the event loop,
    not on a second pool thread. (A sync route whose session came from a yield dependency
    held its connection until FastAPI had serialized the answer on another pool thread;
    under load every pool thread waited for a connection while every connection waited for
    a thread: issue 16, every request timed out at 100 clients.) Committed before the
    answer is sent, so a client reading back what it just created finds it.
    """

    def __init__(self, db: Database):
        self._db = db

    async def run(self, work: Callable[[Session], T]) -> T:
        return await run_in_threadpool(self._in_session, work)

    def _in_session(self, work: Callable[[Session], T]) -> T:
        with self._db.session() as session:
            return work(session)


async def get_transactions(ctx: ContextDep) -> Transactions:
    return Transactions(ctx.db)


CallerDep = Annotated[Caller, Depends(get_caller)]
DbDep = Annotated[Transactions, Depends(get_transactions)]
