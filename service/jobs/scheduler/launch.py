"""Stage two: ``queued`` jobs without a run are submitted to Ray, oldest first, within
``max_concurrent_jobs`` across every API replica, and only once the cluster has room for
their workers.

Room is Ray's free resources (:meth:`~service.context.RayRuns.cluster`) less the workers of
runs submitted but not yet started, which Ray still reports free. A job that does not fit
waits, with one event saying why, and holds back the jobs queued after it (oldest first, so
a big job is not starved by small ones); a job that no longer fits even on the whole cluster
(it shrank since the job was created) waits without holding the others back. While Ray
cannot be reached nothing is launched; on a cluster with no node for a worker yet (an
autoscaler at zero) runs are submitted as they come, for the autoscaler to see them.
"""

from __future__ import annotations

import logging
import sys

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.orm import Session

from contract.bucket import spec_key
from contract.spec import TrainingSpec
from service.context import AppContext
from service.db import JobEventRow, JobRow
from service.jobs.capacity import ClusterView
from service.jobs.service import cluster_view, submission_id, worker_count, workers_of
from service.lifecycle import FOLLOWED, JobStatus, add_event
from service.settings import Settings
from service.storage import BlobStore

log = logging.getLogger("openft.scheduler")
LAUNCH_LOCK_KEY = 0x6F70656E6674  # "openft": one PostgreSQL advisory lock for launches


WAITING = "capacity"
"""``data.waiting`` of the event that says a job waits for room: said once, not per tick."""


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
            .order_by(JobRow.created_seq, JobRow.id).with_for_update(skip_locked=True)
        ).all()
        if not waiting:
            return
        cluster = cluster_view(ctx, s)
        if cluster is None:
            log.warning("Ray cannot be reached; %d queued job(s) wait", len(waiting))
            return
        room = cluster.worker_slots - workers_of(s, running=True)  # free now
        room -= workers_of(s, running=False)  # submitted, not placed yet
        for job in waiting:
            if free <= 0:
                return
            needs = worker_count(job)
            if needs > room and cluster.has_workers:
                _say_waiting(s, job, needs, room, cluster)
                if needs <= cluster.worker_slots:
                    return  # it fits once running jobs end: first in line
                continue
            if _launch(ctx, s, job):
                free, room = free - 1, room - needs


def _say_waiting(s: Session, job: JobRow, needs: int, room: int, cluster: ClusterView) -> None:
    last = s.scalar(select(JobEventRow).where(JobEventRow.job_id == job.id)
                    .order_by(JobEventRow.seq.desc()).limit(1))
    if last is not None and (last.data or {}).get("waiting") == WAITING:
        return
    add_event(s, job.id, (
        f"Waiting for room on the Ray cluster: this job needs {needs} worker(s) of "
        f"{cluster.describe_worker()}, {max(room, 0)} free now"
        + ("" if needs <= cluster.worker_slots else
           f", {cluster.worker_slots} on the whole cluster beside serving")),
        data={"waiting": WAITING, "num_workers": needs, "free_workers": max(room, 0)})


def _launch(ctx: AppContext, s: Session, job: JobRow) -> bool:
    run = submission_id(job)
    if job.resume_from:
        _point_spec_at_checkpoint(ctx.blobs, job)
    try:
        ctx.ray.submit(
            run,
            entrypoint=(f"{sys.executable} -m training.driver "
                        f"s3://{ctx.settings.s3_bucket}/{spec_key(job.id)}"),
            env_vars=training_env(ctx.settings),
            metadata={"openft_job_id": job.id},
        )
    except Exception as e:  # a fresh head refuses for a few seconds: next tick
        log.warning("could not submit %s to Ray yet: %s", job.id, e)
        return False
    # Read from the row as the update finds it: a cancel that landed while Ray took the run
    # found no run to stop, so its stop is owed here (the next tick pays it).
    s.execute(update(JobRow).where(JobRow.id == job.id).values(
        ray_submission_id=run, run_count=JobRow.run_count + 1,
        run_stop_pending=or_(JobRow.run_stop_pending, JobRow.status == JobStatus.CANCELLED)))
    add_event(s, job.id, "Submitted the training run to Ray" + (
        f", resuming from {job.resume_from}" if job.resume_from else ""))
    return True


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
    """What the training run needs to reach the bucket; travels in Ray's ``runtime_env``,
    which anyone who may list the cluster's jobs can read. So the bucket's keys travel only
    with ``training_s3_credentials="runtime_env"`` and keys configured; with ``"node"`` (or
    the default credential chain) the Ray nodes supply them. The Ray token and the database
    URL never travel: the driver inherits the head's own ``RAY_AUTH_TOKEN``."""
    endpoint = st.resolved_s3_endpoint_url
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_REGION": st.s3_region,
        "AWS_DEFAULT_REGION": st.s3_region,
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
        "PYTHONUNBUFFERED": "1",
        # With several Ray clusters on one host, Ray Train's helpers must know which is ours.
        "RAY_API_SERVER_ADDRESS": st.resolved_ray_address,
    }
    keys = st.s3_credentials() if st.training_s3_credentials == "runtime_env" else None
    if keys is not None:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = keys
    return env
