"""A job's life: its statuses, the one table of moves between them, and the move itself.

Every part of the service that asks "may this job be paused?", "is its file in use?", "does
the scheduler watch it?" reads a set derived here, so adding a status or a move is one edit
of :data:`MOVES`::

    validating_files -> queued | failed | cancelled
    queued           -> running | paused | succeeded | failed | cancelled
    running          -> queued (run lost, resumed from a checkpoint) | paused | succeeded
                        | failed | cancelled
    paused           -> queued (resume) | succeeded | failed | cancelled
                        (a run that finished or failed before it could checkpoint)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.db import JobEventRow, JobRow
from service.ids import new_id, now


class JobStatus(StrEnum):
    """OpenAI's job statuses (``paused`` is OpenAI's too)."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = JobStatus
MOVES: Mapping[JobStatus, frozenset[JobStatus]] = {
    S.VALIDATING_FILES: frozenset({S.QUEUED, S.FAILED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.PAUSED, S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    S.RUNNING: frozenset({S.QUEUED, S.PAUSED, S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    S.PAUSED: frozenset({S.QUEUED, S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
"""Which status may move to which; nothing else may happen to a job."""


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """The statuses a job may leave for ``target``."""
    return frozenset(s for s, targets in MOVES.items() if target in targets)


TERMINAL = frozenset(s for s, targets in MOVES.items() if not targets)
"""Settled for good: webhooks announce these, and nothing moves a job out of them."""
ACTIVE = frozenset(MOVES) - TERMINAL
"""Not settled yet: its files are in use (deleting one would break a resume)."""
CANCELLABLE = sources_of(S.CANCELLED)
PAUSABLE = sources_of(S.PAUSED)
RESUMABLE = frozenset({S.PAUSED})
"""Resume is paused -> queued (running -> queued is the scheduler requeueing a lost run)."""
FOLLOWED = sources_of(S.SUCCEEDED)
"""A job that may have a Ray run: the scheduler follows the run and settles the job by it."""


class IllegalTransition(RuntimeError):
    """A move :data:`MOVES` does not allow: a bug in the service, not a user's mistake."""


def check_move(from_states: Iterable[str], to: JobStatus) -> None:
    illegal = sorted(s for s in from_states if to not in MOVES[JobStatus(s)])
    if illegal:
        raise IllegalTransition(f"a job may not move from {', '.join(illegal)} to {to}")


def add_event(session: Session, job_id: str, message: str, *, level: str = "info",
              type_: str = "message", data: dict[str, Any] | None = None,
              created_at: int | None = None) -> None:
    session.add(JobEventRow(id=new_id("ftevent"), job_id=job_id, created_at=created_at or now(),
                            level=level, type=type_, message=message, data=data))


def transition(session: Session, job_id: str, from_states: Iterable[JobStatus], to: JobStatus,
               message: str, level: str = "info", **fields: Any) -> bool:
    """Compare-and-set a status change with its event, so racing writers cannot both win.

    False when the job is no longer in one of ``from_states``; :class:`IllegalTransition`
    when the table does not allow the move at all.
    """
    sources = [str(s) for s in from_states]
    check_move(sources, to)
    result = session.execute(
        update(JobRow).where(JobRow.id == job_id, JobRow.status.in_(sources))
        .values(status=str(to), **fields)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id, message, level=level)
    return True
