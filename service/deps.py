"""Typed dependencies: what a route needs, taken from ``app.state`` built in the lifespan."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from service.auth import Caller
from service.context import AppContext


def get_context(request: Request) -> AppContext:
    return request.app.state.ctx


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_session(ctx: ContextDep) -> Iterator[Session]:
    with ctx.db.session() as session:
        yield session


def get_caller(ctx: ContextDep, authorization: Annotated[str | None, Header()] = None) -> Caller:
    return ctx.keys.authenticate(authorization)


# scope="function": commit when the route returns, before the response is sent. With the
# default ("request") the commit runs after sending, and a client that creates a job and
# reads it back at once can be told it does not exist.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
CallerDep = Annotated[Caller, Depends(get_caller)]
