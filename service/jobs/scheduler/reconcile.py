"""A run Ray no longer knows (its cluster restarted): go on from the last checkpoint, or fail."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import CheckpointRow, JobRow
from service.jobs.scheduler.settle import fail
from service.lifecycle import JobStatus, transition


def recover_lost_run(s: Session, job: JobRow) -> None:
    """A running job goes back to ``queued`` (the launch stage resubmits it with
    ``resume_from``); a queued or paused one keeps its status and resumes from there."""
    latest = s.scalar(select(CheckpointRow.state_key).where(
        CheckpointRow.job_id == job.id, CheckpointRow.state_key.is_not(None)
    ).order_by(CheckpointRow.step_number.desc()).limit(1))
    if not latest:
        fail(s, job, "The training run was lost (Ray no longer knows it).")
        return
    job.resume_from, job.ray_submission_id = latest, None
    if job.status == JobStatus.RUNNING:
        transition(s, job.id, [JobStatus.RUNNING], JobStatus.QUEUED,
                   f"The training run was lost; resuming from checkpoint {latest}",
                   level="warn")
