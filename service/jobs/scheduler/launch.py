"""Stage two: ``queued`` jobs without a run are submitted to Ray, oldest first, within
``max_concurrent_jobs`` across every API replica."""

from __future__ import annotations

import logging
import sys

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from contract.bucket import spec_key
from contract.spec import TrainingSpec
from service.context import AppContext
from service.db import JobRow
from service.lifecycle import FOLLOWED, JobStatus, add_event
from service.settings import Settings
from service.storage import BlobStore

log = logging.getLogger("openft.scheduler")
LAUNCH_LOCK_KEY = 0x6F70656E6674  # "openft": one PostgreSQL advisory lock for launches


def launch_queued(ctx: AppContext) -> None:
    with ctx.db.session() as s:
        _serialize_launches(s)
        busy = s.scalar(select(func.count()).select_from(JobRow).where(
            JobRow.ray_submission_id.is_not(None), JobRow.status.in_(sorted(FOLLOWED))))
        free = ctx.settings.max_concurrent_jobs - (busy or 0)
        if free <= 0:
            return
        waiting = s.scalars(
            select(JobRow).where(JobRow.status == JobStatus.QUEUED,
                                 JobRow.ray_submission_id.is_(None))
            .order_by(JobRow.created_at).limit(free).with_for_update(skip_locked=True)
        ).all()
        for job in waiting:
            _launch(ctx, s, job)


def _launch(ctx: AppContext, s: Session, job: JobRow) -> None:
    # Each run of a job (a resume, a recovery) is a new Ray job: Ray refuses a reused id.
    submission_id = f"openft-{job.id}" + (f"-r{job.run_count}" if job.run_count else "")
    if job.resume_from:
        _point_spec_at_checkpoint(ctx.blobs, job)
    try:
        ctx.ray.submit(
            submission_id,
            entrypoint=(f"{sys.executable} -m training.driver "
                        f"s3://{ctx.settings.s3_bucket}/{spec_key(job.id)}"),
            env_vars=training_env(ctx.settings),
            metadata={"openft_job_id": job.id},
        )
    except Exception as e:  # a fresh head refuses for a few seconds: next tick
        log.warning("could not submit %s to Ray yet: %s", job.id, e)
        return
    job.ray_submission_id = submission_id
    job.run_count += 1
    add_event(s, job.id, "Submitted the training run to Ray" + (
        f", resuming from {job.resume_from}" if job.resume_from else ""))


def _point_spec_at_checkpoint(blobs: BlobStore, job: JobRow) -> None:
    spec = TrainingSpec.model_validate_json(blobs.get(spec_key(job.id)))
    spec = spec.model_copy(update={"resume_from": job.resume_from})
    blobs.put(spec_key(job.id), spec.model_dump_json(indent=2).encode(), "application/json")


def _serialize_launches(s: Session) -> None:
    """Replicas take turns counting running jobs and launching, so together they respect
    ``max_concurrent_jobs``. SQLite serves one process and needs no lock."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LAUNCH_LOCK_KEY})


def training_env(st: Settings) -> dict[str, str]:
    """What the training run needs to reach the bucket; travels in Ray's runtime_env."""
    endpoint = st.resolved_s3_endpoint_url
    return {
        "AWS_ACCESS_KEY_ID": st.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": st.s3_secret_key.get_secret_value(),
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_REGION": st.s3_region,
        "AWS_DEFAULT_REGION": st.s3_region,
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
        "PYTHONUNBUFFERED": "1",
        # With several Ray clusters on one host, Ray Train's helpers must know which is ours.
        "RAY_API_SERVER_ADDRESS": st.resolved_ray_address,
    }
