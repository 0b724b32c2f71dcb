"""Which models a caller may name: base models, then its organization's fine-tuned models."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.auth import Caller
from service.db import CheckpointRow, JobRow
from service.errors import ModelNotFound
from service.jobs.naming import internal_name
from service.models.protocol import ModelObject
from service.settings import Settings

BASE_OWNER = "openft"


@dataclass(frozen=True)
class ServedModel:
    public: ModelObject
    internal: str
    """The name serving knows: ``<base>`` or ``<base>:<model_key>``."""


def _base_models(settings: Settings, created: int) -> list[ServedModel]:
    return [ServedModel(ModelObject(id=m, created=created, owned_by=BASE_OWNER), m)
            for m in settings.base_model_dirs()]


def list_models(session: Session, settings: Settings, caller: Caller,
                started_at: int) -> list[ModelObject]:
    jobs = session.scalars(select(JobRow).where(
        JobRow.organization == caller.organization, JobRow.status == "succeeded",
        JobRow.fine_tuned_model.is_not(None)).order_by(JobRow.finished_at))
    tuned = [ModelObject(id=j.fine_tuned_model, created=j.finished_at or j.created_at,
                         owned_by=j.organization) for j in jobs]
    return [m.public for m in _base_models(settings, started_at)] + tuned


def resolve(session: Session, settings: Settings, caller: Caller, model_id: str,
            started_at: int) -> ServedModel:
    """The model behind a public id, if the caller may use it; 404 otherwise."""
    for base in _base_models(settings, started_at):
        if base.public.id == model_id:
            return base
    job = session.scalar(select(JobRow).where(
        JobRow.fine_tuned_model == model_id, JobRow.status == "succeeded"))
    if job is None:
        ckpt = session.scalar(select(CheckpointRow).where(
            CheckpointRow.fine_tuned_model_checkpoint == model_id))
        job = session.get(JobRow, ckpt.job_id) if ckpt else None
    if job is None or job.organization != caller.organization or job.status != "succeeded":
        raise ModelNotFound(model_id)
    return ServedModel(
        ModelObject(id=model_id, created=job.finished_at or job.created_at,
                    owned_by=job.organization),
        internal_name(job.model, job.model_key),
    )
