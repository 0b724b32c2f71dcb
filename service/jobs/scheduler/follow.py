"""A submitted job: ingest its events, then act on what Ray says of its run."""

from __future__ import annotations

from contract.bucket import control_key
from service.context import AppContext
from service.ids import now
from service.jobs.scheduler.ingest import ingest
from service.jobs.scheduler.reconcile import recover_lost_run
from service.jobs.scheduler.rows import claim
from service.jobs.scheduler.settle import fail, run_failed, run_succeeded
from service.jobs.service import request_pause
from service.lifecycle import FOLLOWED, JobStatus, transition

STOPPED_OUTSIDE = "The training run was stopped outside openft."


def follow(ctx: AppContext, job_id: str) -> None:
    with ctx.db.session() as s:
        job = claim(s, job_id)
        if job is None or job.status not in FOLLOWED or not job.ray_submission_id:
            return
        ingest(ctx.blobs, s, job)
        state = ctx.ray.status(job.ray_submission_id)
        if state is None:
            recover_lost_run(s, job)
            return
        if state.status in ("SUCCEEDED", "FAILED"):
            ingest(ctx.blobs, s, job)  # what the run wrote between the first read and its end
        match state.status:
            case "PENDING" | "RUNNING" if job.status == JobStatus.PAUSED:
                # The pause is recorded; its request to the run may not have reached the
                # bucket (the API asks after committing): ask until the run has stopped.
                if not ctx.blobs.exists(control_key(job.id)):
                    request_pause(ctx.blobs, job.id)
            case "RUNNING" if job.status == JobStatus.QUEUED:
                transition(s, job.id, [JobStatus.QUEUED], JobStatus.RUNNING,
                           "Fine-tuning job started", started_at=job.started_at or now())
            case "SUCCEEDED":
                run_succeeded(ctx.blobs, s, job)
            case "FAILED":
                run_failed(s, job, state.message)
            case "STOPPED":
                fail(s, job, STOPPED_OUTSIDE)
