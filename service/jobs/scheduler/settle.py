"""A run that ended: the job succeeds (model, checkpoints, result file), fails, or, if it
ended at a pause's checkpoint, lets go of its Ray run so a resume can start a new one."""

from __future__ import annotations

import base64
import csv
import io
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from contract.bucket import control_key, results_key
from service.db import CheckpointRow, JobEventRow, JobRow
from service.files.service import register
from service.ids import new_id, now
from service.jobs.best import judge_final
from service.lifecycle import FOLLOWED, JobStatus, add_event, transition
from service.models.naming import checkpoint_name, fine_tuned_model_name
from service.storage import BlobStore

RESULT_COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss",
                  "valid_mean_token_accuracy"]
NO_MODEL = "The training run ended without producing a model."


def run_succeeded(blobs: BlobStore, s: Session, job: JobRow) -> None:
    """Ray says the run exited cleanly: with a model, or stopped at a pause's checkpoint."""
    if job.trained_tokens is not None:
        succeed(blobs, s, job)
    elif job.resume_from and job.status != JobStatus.RUNNING:
        release_paused(s, job)  # paused, or paused and already resumed (queued)
    else:
        fail(s, job, NO_MODEL)


def run_failed(s: Session, job: JobRow, ray_message: str) -> None:
    """Ray says the run failed: with the reason the run reported, or Ray's."""
    if job.error:
        transition(s, job.id, FOLLOWED, JobStatus.FAILED,
                   job.error.get("message", "Training failed"), level="error",
                   finished_at=now())
    else:
        fail(s, job, "Training failed. " + ray_message[-300:])


def release_paused(s: Session, job: JobRow) -> None:
    """The run checkpointed and ended: its Ray workers are gone; resume starts anew."""
    job.ray_submission_id = None
    job.estimated_finish = None
    add_event(s, job.id, f"Training stopped at checkpoint {job.resume_from}; "
              "resume continues from there")


def succeed(blobs: BlobStore, s: Session, job: JobRow) -> None:
    name = fine_tuned_model_name(job.base, job.organization, job.suffix, job.model_key)
    blobs.delete(control_key(job.id))  # a pause that came too late to matter
    metrics = _metric_rows(s, job.id)
    result_file = _write_results(blobs, s, job, metrics)
    last = metrics[-1] if metrics else {"step": 0}
    final_step = int(last.get("step", 0))
    has_final = s.scalar(select(CheckpointRow.id).where(
        CheckpointRow.job_id == job.id, CheckpointRow.step_number == final_step))
    if not has_final:  # the final adapter is always a servable checkpoint
        s.add(CheckpointRow(
            id=new_id("ftckpt"), job_id=job.id, created_at=now(), step_number=final_step,
            fine_tuned_model_checkpoint=checkpoint_name(name, final_step),
            metrics={k: v for k, v in last.items() if k != "total_steps"},
            adapter_key=job.model_key,
        ))
    warning = judge_final(s, job)  # every checkpoint row is here, whatever runs it took
    transition(s, job.id, FOLLOWED, JobStatus.SUCCEEDED,
               "The job has successfully completed", finished_at=now(),
               fine_tuned_model=name, result_files=[result_file])
    add_event(s, job.id, f"New fine-tuned model created: {name}")
    if warning:
        add_event(s, job.id, warning, level="warn")


def fail(s: Session, job: JobRow, message: str) -> None:
    transition(s, job.id, FOLLOWED, JobStatus.FAILED, message, level="error",
               finished_at=now(),
               error={"code": "server_error", "message": message, "param": None})


def _metric_rows(s: Session, job_id: str) -> list[dict[str, Any]]:
    rows = s.scalars(select(JobEventRow.data).where(
        JobEventRow.job_id == job_id, JobEventRow.type == "metrics"
    ).order_by(JobEventRow.seq))
    # A run resumed after a loss repeats the steps since its checkpoint: keep the last.
    by_step = {r.get("step"): r for r in rows if r}
    return sorted(by_step.values(), key=lambda r: r.get("step") or 0)


def _write_results(blobs: BlobStore, s: Session, job: JobRow,
                   metrics: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for m in metrics:
        writer.writerow([m.get("step"), m.get("train_loss"),
                         m.get("train_mean_token_accuracy", m.get("train_accuracy")),
                         m.get("valid_loss"), m.get("valid_mean_token_accuracy")])
    # OpenAI serves result files base64-encoded and client code decodes them: so do we.
    body = base64.b64encode(buf.getvalue().encode())
    key = results_key(job.id)
    blobs.put(key, body, "text/csv")
    row = register(s, job.organization, key, "step_metrics.csv", "fine-tune-results",
                   len(body))
    return row.id
