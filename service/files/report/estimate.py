"""Duration and GPU-hours of a run, from the throughput this deployment measured.

Each succeeded job of the same base model recorded the tokens it trained (``trained_tokens``,
all epochs, as billed) and when its run started and finished (``started_at`` is when Ray first
reported it running, so the time Ray took to place it is not counted; Ray workers starting and
the model loading are). Throughput is the sum of their tokens over the sum of their run
times, over the :data:`MEASURED_JOBS` most recent; a job that was paused and resumed is left
out (its run time holds the pause). Without any such job there is no estimate
(``basis: "none"``), rather than a made-up constant.

The run's shape is the most recent measured job's: its workers, and its GPUs (one a worker
when its spec trained on GPU; 0 on a CPU cluster, where ``worker_hours`` is what it costs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from contract.bucket import spec_key
from contract.spec import TrainingSpec
from service.db import JobRow
from service.files.report.protocol import Estimate
from service.lifecycle import JobStatus
from service.storage import BlobStore

MEASURED_JOBS = 10
log = logging.getLogger("openft.report")


@dataclass(frozen=True)
class Run:
    """What one earlier run measured."""

    tokens: int
    seconds: float
    workers: int
    gpus: int


def measured_runs(session: Session, blobs: BlobStore, base_model: str) -> list[Run]:
    """The most recent succeeded, never-resumed runs on ``base_model``, newest first."""
    rows = session.scalars(
        select(JobRow)
        .where(JobRow.status == JobStatus.SUCCEEDED,
               or_(JobRow.base_model == base_model,
                   (JobRow.base_model.is_(None)) & (JobRow.model == base_model)),
               JobRow.trained_tokens > 0, JobRow.started_at.is_not(None),
               JobRow.finished_at > JobRow.started_at, JobRow.run_count <= 1)
        .order_by(JobRow.finished_at.desc(), JobRow.id.desc())
        .limit(MEASURED_JOBS))
    return [Run(tokens=int(row.trained_tokens or 0),
                seconds=float((row.finished_at or 0) - (row.started_at or 0)),
                workers=_workers(row), gpus=_gpus(blobs, row)) for row in rows]


def _workers(row: JobRow) -> int:
    """The run's resolved ``num_workers`` (validation wrote it into the job's method)."""
    workers = row.method_hyperparameters.get("num_workers")
    return workers if isinstance(workers, int) else 1


def _gpus(blobs: BlobStore, row: JobRow) -> int:
    """GPUs the run held: one a worker when its spec trained on GPU."""
    try:
        spec = TrainingSpec.model_validate_json(blobs.get(spec_key(row.id)))
    except (ValidationError, ClientError, BotoCoreError) as e:
        log.warning("cannot read the spec of job %s for the estimate: %s", row.id, e)
        return 0
    return spec.hyperparameters.num_workers if spec.use_gpu else 0


def estimate(runs: list[Run], tokens_per_epoch: int, epochs: int) -> Estimate:
    """The estimate for ``tokens_per_epoch`` trained ``epochs`` times.

    >>> runs = [Run(tokens=36_000, seconds=40.0, workers=2, gpus=2),
    ...         Run(tokens=9_000, seconds=20.0, workers=2, gpus=2)]
    >>> e = estimate(runs, tokens_per_epoch=5_000, epochs=3)
    >>> e.tokens_per_second, e.tokens, e.seconds, e.gpu_hours, e.worker_hours
    (750.0, 15000, 20.0, 0.0111, 0.0111)
    """
    tokens = tokens_per_epoch * epochs
    if not runs:
        return Estimate(basis="none", jobs_measured=0, tokens_per_second=None, epochs=epochs,
                        tokens=tokens, seconds=None, gpus=None, gpu_hours=None,
                        worker_hours=None)
    rate = sum(r.tokens for r in runs) / sum(r.seconds for r in runs)
    seconds = tokens / rate
    latest = runs[0]
    return Estimate(basis="measured", jobs_measured=len(runs),
                    tokens_per_second=round(rate, 1), epochs=epochs, tokens=tokens,
                    seconds=round(seconds, 1), gpus=latest.gpus,
                    gpu_hours=round(seconds * latest.gpus / 3600, 4),
                    worker_hours=round(seconds * latest.workers / 3600, 4))
