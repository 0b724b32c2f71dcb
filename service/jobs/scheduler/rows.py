"""Row locks the stages share: with several API replicas, one works on a job at a time."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import JobRow


def claim(s: Session, job_id: str) -> JobRow | None:
    """The job row, locked for this transaction; None if another API replica holds it.

    With several API processes on PostgreSQL, only the one holding the row lock validates,
    ingests or settles the job in a tick, so events are never ingested twice.
    """
    return s.scalar(select(JobRow).where(JobRow.id == job_id)
                    .with_for_update(skip_locked=True))
