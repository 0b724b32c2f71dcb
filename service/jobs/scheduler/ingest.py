"""Progress from the bucket into the database: each event batch of a run, once, in order.

A run appends numbered batches of :mod:`contract.events` lines; the job's ``events_cursor``
is the number of the next batch to read, so an API restart neither skips nor repeats one.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from contract.bucket import event_batch_key, events_prefix, model_key_of
from contract.events import (
    BaselineEvent,
    CheckpointEvent,
    ErrorEvent,
    MetricsData,
    MetricsEvent,
    PausedEvent,
    ResultEvent,
    TrainingEvent,
    parse_event,
)
from service.db import CheckpointRow, JobRow
from service.ids import new_id, now
from service.jobs.best import refresh_best
from service.lifecycle import add_event
from service.models.naming import checkpoint_name, fine_tuned_model_name
from service.storage import BlobStore

log = logging.getLogger("openft.scheduler")


def ingest(blobs: BlobStore, s: Session, job: JobRow) -> None:
    """Copy new event batches from the bucket into the database, each batch once."""
    start_after = event_batch_key(job.id, job.events_cursor - 1) if job.events_cursor else ""
    for key in blobs.list_keys(events_prefix(job.id), start_after=start_after):
        if key != event_batch_key(job.id, job.events_cursor):
            break  # a gap: the batch before it is still being written
        for line in blobs.get(key).splitlines():
            if line.strip():
                _apply_line(s, job, line, key)
        job.events_cursor += 1
    s.flush()


def _apply_line(s: Session, job: JobRow, line: bytes, key: str) -> None:
    try:
        event = parse_event(line)
    except ValidationError as e:  # a writer's bug must not stall the job on this batch
        log.warning("skipping an event of %s in %s that does not parse: %s", job.id, key, e)
        return
    apply(s, job, event)


def apply(s: Session, job: JobRow, event: TrainingEvent) -> None:
    """What one event changes in the job, and the event as the user's job event."""
    match event:
        case MetricsEvent(data=data):
            _estimate_finish(job, data)
        case BaselineEvent(data=data):
            if job.base_valid_loss is not None:
                return  # a run restarted before its first checkpoint measured it again
            job.base_valid_loss = json_safe(data.full_valid_loss)
            add_event(s, job.id, event.message, level=event.level, created_at=event.created_at,
                      data=json_safe(data.model_dump(mode="json")))
            return
        case CheckpointEvent():
            _record_checkpoint(s, job, event)
            refresh_best(s, job)
        case PausedEvent(data=data):
            job.resume_from = data.checkpoint_key
        case ResultEvent(data=data):
            job.trained_tokens = data.trained_tokens
            return  # settling announces the model, by its public name
        case ErrorEvent(data=data):
            job.error = {"code": data.code, "message": data.message, "param": data.param}
    metrics = (json_safe(event.data.model_dump(mode="json", exclude_unset=True))
               if isinstance(event, MetricsEvent) else None)
    add_event(s, job.id, event.message, level=event.level,
              type_="metrics" if metrics is not None else "message", data=metrics,
              created_at=event.created_at)


def _estimate_finish(job: JobRow, data: MetricsData) -> None:
    step, total = data.step, data.total_steps
    if job.started_at and step and total:
        elapsed = max(now() - job.started_at, 1)
        job.estimated_finish = now() + int(elapsed / step * max(total - step, 0))


def _record_checkpoint(s: Session, job: JobRow, event: CheckpointEvent) -> None:
    data = event.data
    adapter = model_key_of(data.adapter_key or "")
    metrics = json_safe(data.metrics) if data.metrics else None
    existing = s.scalar(select(CheckpointRow).where(
        CheckpointRow.job_id == job.id, CheckpointRow.step_number == data.step))
    if existing is not None:  # a resumed run wrote this step again: keep the newest
        existing.metrics = metrics or existing.metrics
        existing.adapter_key = adapter or existing.adapter_key
        existing.state_key = data.checkpoint_key or existing.state_key
        return
    name = fine_tuned_model_name(job.base, job.organization, job.suffix, job.model_key)
    s.add(CheckpointRow(
        id=new_id("ftckpt"), job_id=job.id, created_at=event.created_at,
        step_number=data.step, fine_tuned_model_checkpoint=checkpoint_name(name, data.step),
        metrics=metrics or {"step": data.step}, adapter_key=adapter,
        state_key=data.checkpoint_key,
    ))


def json_safe(value: Any) -> Any:
    """NaN/inf (a diverged loss) become null: JSON columns and clients cannot hold them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
