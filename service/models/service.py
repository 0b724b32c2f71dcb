"""Which models a caller may name: base models, then its organization's fine-tuned models."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from contract.bucket import deleted_marker_key
from service.auth import Caller
from service.db import CheckpointRow, JobRow
from service.errors import ModelNotFound, PermissionDenied
from service.ids import now
from service.lifecycle import JobStatus
from service.models.naming import internal_name
from service.models.protocol import ModelObject
from service.settings import Settings
from service.storage import BlobStore

BASE_OWNER = "openft"


@dataclass(frozen=True)
class ServedModel:
    public: ModelObject
    internal: str
    """The name serving knows: ``<base>`` or ``<base>:<model_key>``."""
    full_finetune: bool = False
    """A whole model, not an adapter: multi-LoRA serving cannot answer with it."""


def _base_models(settings: Settings, created: int) -> list[ServedModel]:
    return [ServedModel(ModelObject(id=m, created=created, owned_by=BASE_OWNER), m)
            for m in settings.base_model_configs()]


def list_models(session: Session, settings: Settings, caller: Caller,
                started_at: int) -> list[ModelObject]:
    jobs = session.scalars(select(JobRow).where(
        JobRow.organization == caller.organization, JobRow.status == JobStatus.SUCCEEDED,
        JobRow.fine_tuned_model.is_not(None), JobRow.model_deleted_at.is_(None),
    ).order_by(JobRow.finished_at))
    tuned = [ModelObject(id=j.fine_tuned_model, created=j.finished_at or j.created_at,
                         owned_by=j.organization) for j in jobs]
    checkpoints = session.execute(
        select(CheckpointRow.fine_tuned_model_checkpoint, CheckpointRow.created_at)
        .join(JobRow, JobRow.id == CheckpointRow.job_id)
        .where(JobRow.organization == caller.organization, JobRow.model_deleted_at.is_(None),
               CheckpointRow.adapter_key.is_not(None))
        .order_by(CheckpointRow.created_at, CheckpointRow.seq))
    servable = [ModelObject(id=name, created=created, owned_by=caller.organization)
                for name, created in checkpoints]
    return [m.public for m in _base_models(settings, started_at)] + tuned + servable


def resolve(session: Session, settings: Settings, caller: Caller, model_id: str,
            started_at: int) -> ServedModel:
    """The model behind a public id, if the caller may use it; 404 otherwise."""
    for base in _base_models(settings, started_at):
        if base.public.id == model_id:
            return base
    job, adapter_key = owned_model(session, caller, model_id)
    return ServedModel(
        ModelObject(id=model_id, created=job.finished_at or job.created_at,
                    owned_by=job.organization),
        internal_name(job.base, adapter_key),
        full_finetune=bool(job.method_hyperparameters.get("full_finetune")),
    )


def owned_model(session: Session, caller: Caller, model_id: str) -> tuple[JobRow, str]:
    """The job behind the caller's fine-tuned model or checkpoint ``model_id``, and its
    adapter; another organization's or a deleted model is not found, as an unknown one."""
    job, adapter_key = owning_job(session, model_id)
    if job is None or job.organization != caller.organization or job.model_deleted_at:
        raise ModelNotFound(model_id)
    return job, adapter_key


def owning_job(session: Session, model_id: str) -> tuple[JobRow | None, str]:
    """The job behind a fine-tuned model or checkpoint name, and the adapter to serve."""
    job = session.scalar(select(JobRow).where(
        JobRow.fine_tuned_model == model_id, JobRow.status == JobStatus.SUCCEEDED))
    if job is not None:
        return job, job.model_key
    ckpt = session.scalar(select(CheckpointRow).where(
        CheckpointRow.fine_tuned_model_checkpoint == model_id,
        CheckpointRow.adapter_key.is_not(None)))
    if ckpt is None:
        return None, ""
    return session.get(JobRow, ckpt.job_id), ckpt.adapter_key or ""


def delete(session: Session, settings: Settings, blobs: BlobStore, caller: Caller,
           model_id: str) -> None:
    """Stop listing and serving a fine-tuned model; its job and adapter objects stay."""
    if model_id in settings.base_model_configs():
        raise PermissionDenied(f"You cannot delete the base model {model_id}.", param="model")
    job = session.scalar(select(JobRow).where(
        JobRow.fine_tuned_model == model_id, JobRow.status == JobStatus.SUCCEEDED))
    if job is None or job.organization != caller.organization or job.model_deleted_at:
        raise ModelNotFound(model_id)
    job.model_deleted_at = now()
    session.flush()
    # Serving reads no database: a marker next to each of the job's adapters tells every
    # replica to stop serving it and drop it (serving.adapters); the weights stay.
    keys = [job.model_key, *session.scalars(select(CheckpointRow.adapter_key).where(
        CheckpointRow.job_id == job.id, CheckpointRow.adapter_key.is_not(None)))]
    for key in keys:
        blobs.put(deleted_marker_key(key), b'{"deleted": true}', "application/json")
