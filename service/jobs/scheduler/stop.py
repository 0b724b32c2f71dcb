"""Runs of cancelled jobs that Ray has not stopped yet (it was away when they were
cancelled): the cancel is recorded, the stop is owed, and each tick pays it."""

from __future__ import annotations

from sqlalchemy import select

from service.context import AppContext
from service.db import JobRow
from service.jobs.service import stop_run


def stop_owed_runs(ctx: AppContext) -> None:
    with ctx.db.session() as s:
        owed = list(s.scalars(select(JobRow.id).where(JobRow.run_stop_pending.is_(True))))
    for job_id in owed:
        if not stop_run(ctx, job_id):
            return  # Ray still away: the others would wait as long
