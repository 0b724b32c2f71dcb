"""The scheduler loop: each tick runs the stages of a job's life, one module each.

- :mod:`.validate`: ``validating_files`` -> ``queued`` (spec written) or ``failed``, in a
  :mod:`.validation_pool` beside the tick: one tenant's large file never holds up the others;
- :mod:`.launch`: ``queued`` jobs without a run are submitted to Ray, within the limit;
- :mod:`.stop`: runs of cancelled jobs that Ray was away to stop are stopped;
- :mod:`.follow`: a submitted job's events are ingested (:mod:`.ingest`) and its run's state
  read from Ray; a finished run is settled (:mod:`.settle`), a run Ray forgot is reconciled
  (:mod:`.reconcile`).

It runs inside every API process. Everything it knows comes from the database, the bucket
and Ray, so a restarted process carries on where the last one stopped
(docs/architecture.md, "Principles").
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import httpx
from botocore.exceptions import BotoCoreError
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError

from service.context import AppContext
from service.db import JobRow
from service.ids import now
from service.jobs.scheduler import follow, launch, validate
from service.jobs.scheduler.stop import stop_owed_runs
from service.jobs.scheduler.validation_pool import ValidationPool
from service.lifecycle import FOLLOWED, JobStatus
from service.metrics import SchedulerMetrics
from service.webhooks import enqueue_settled

UNREACHABLE = (httpx.TransportError, BotoCoreError, OperationalError, InterfaceError)
"""Ray's dashboard, the bucket or the database not answering: worth a line, not a stack."""

log = logging.getLogger("openft.scheduler")


class Scheduler:
    def __init__(self, ctx: AppContext, metrics: SchedulerMetrics | None = None):
        self.ctx = ctx
        self.metrics = metrics or SchedulerMetrics()

    async def run_forever(self) -> None:
        """The service's loop. Validations go to a pool of threads; cancelling the loop (the
        app's shutdown) stops them too, without waiting for a large file."""
        validations = ValidationPool(self.validate, self.ctx.settings.validation_threads)
        due = time.monotonic()
        try:
            while True:
                await asyncio.to_thread(self._timed_tick, due, validations)
                due = time.monotonic() + self.ctx.settings.scheduler_interval_s
                await asyncio.sleep(self.ctx.settings.scheduler_interval_s)
        finally:
            validations.close()

    def _timed_tick(self, due: float, validations: ValidationPool | None = None) -> None:
        """One tick, with how late it started (a busy event loop or thread pool) and how
        long it took."""
        started = time.monotonic()
        self.metrics.tick_started(started - due)
        failed = False
        try:
            self.tick(validations)
        except Exception:  # one bad tick must not stop the loop
            failed = True
            log.exception("scheduler tick failed")
        self.metrics.tick_ended(time.monotonic() - started, failed)

    def tick(self, validations: ValidationPool | None = None) -> None:
        """One pass over every stage. With ``validations`` (the running service) jobs to
        validate are only handed to that pool; without (a test stepping the scheduler) they
        are validated here first, so one tick takes a small job from created to submitted."""
        waiting = self._ids([JobStatus.VALIDATING_FILES])
        if validations is not None:
            validations.start(waiting)
        else:
            for job_id in waiting:
                self._guarded(self.validate, job_id)
        self.launch_queued()
        stop_owed_runs(self.ctx)
        for job_id in self._ids(FOLLOWED, submitted=True):
            self._guarded(self.follow, job_id)
        settled: list[tuple[str, float]] = []
        with self.ctx.db.session() as s:
            enqueue_settled(s, self.ctx.settings, on_settled=lambda job: settled.append(
                (job.status, (job.finished_at or now()) - job.created_at)))
        for status, seconds in settled:  # once committed: a rolled-back tick announces again
            self.metrics.job_settled(status, seconds)

    def validate(self, job_id: str, stop: threading.Event | None = None) -> None:
        validate.validate(self.ctx, job_id, stop)

    def launch_queued(self) -> None:
        launch.launch_queued(self.ctx)

    def follow(self, job_id: str) -> None:
        follow.follow(self.ctx, job_id)

    @staticmethod
    def _guarded(step: Callable[[str], None], job_id: str) -> None:
        """One job's trouble (S3 or Ray briefly away) must not hold up the others.

        A service that cannot be reached is one line per job and tick, not a traceback: an
        outage of Ray or the bucket would otherwise bury the log in identical stacks."""
        try:
            step(job_id)
        except UNREACHABLE as e:
            log.warning("scheduler step %s for %s: %s: %s; retrying next tick",
                        step.__name__, job_id, type(e).__name__, (str(e).splitlines() or [''])[0])
        except Exception:
            log.exception("scheduler step %s failed for %s; retrying next tick",
                          step.__name__, job_id)

    def _ids(self, statuses: frozenset[JobStatus] | list[JobStatus],
             submitted: bool = False) -> list[str]:
        with self.ctx.db.session() as s:
            q = select(JobRow.id).where(JobRow.status.in_(sorted(statuses)))
            if submitted:
                q = q.where(JobRow.ray_submission_id.is_not(None))
            return list(s.scalars(q.order_by(JobRow.created_seq, JobRow.id)))
