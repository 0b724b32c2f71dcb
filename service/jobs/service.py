"""Fine-tuning jobs: creation, reads, cancel. The scheduler moves them through their life."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from contract.bucket import control_key
from contract.hyperparameters import OPENAI_KEYS
from service.auth import Caller
from service.base_models.service import BaseModelUnavailable, tokenizer_dir
from service.context import AppContext
from service.db import CheckpointRow, JobEventRow, JobRow
from service.errors import Conflict, InvalidRequest, ModelNotFound, NotFound
from service.files.service import get_row as get_file_row
from service.ids import created, new_id, now, random_tail
from service.jobs import hyperparameters
from service.jobs.capacity import ClusterView, ModelFacts
from service.jobs.protocol import (
    CreateJobRequest,
    DpoHyperparameters,
    FineTuningJob,
    JobCheckpoint,
    JobEvent,
    SupervisedHyperparameters,
)
from service.lifecycle import (
    CANCELLABLE,
    FOLLOWED,
    PAUSABLE,
    RESUMABLE,
    JobStatus,
    add_event,
    transition,
)
from service.models.service import owning_job
from service.storage import BlobStore

METADATA_MAX_KEYS, METADATA_KEY_MAX, METADATA_VALUE_MAX = 16, 64, 512
log = logging.getLogger("openft.jobs")


def to_object(row: JobRow) -> FineTuningJob:
    hyper = dict(row.hyperparameters)
    return FineTuningJob(
        id=row.id, created_at=row.created_at,
        error=row.error if row.status == JobStatus.FAILED else None,
        fine_tuned_model=row.fine_tuned_model if row.status == JobStatus.SUCCEEDED else None,
        finished_at=row.finished_at, hyperparameters=hyper, model=row.model,
        organization_id=row.organization, result_files=list(row.result_files or []),
        status=row.status,
        trained_tokens=row.trained_tokens if row.status == JobStatus.SUCCEEDED else None,
        training_file=row.training_file, validation_file=row.validation_file,
        seed=row.seed,
        method={"type": row.method_type,
                row.method_type: {"hyperparameters": row.method_hyperparameters or hyper}},
        metadata=row.job_metadata, integrations=row.integrations,
        estimated_finish=row.estimated_finish if row.status == JobStatus.RUNNING else None,
        best_checkpoint=row.best_checkpoint, base_valid_loss=row.base_valid_loss,
    )


def create(ctx: AppContext, session: Session, caller: Caller,
           req: CreateJobRequest) -> FineTuningJob:
    base_models = set(ctx.settings.base_model_configs())
    base_model, init_adapter_key = _starting_model(session, caller, req.model, base_models)
    method_type = req.method.type if req.method else "supervised"
    if method_type == "reinforcement":
        raise InvalidRequest(
            "Fine-tuning method 'reinforcement' is not supported; use 'supervised' or 'dpo'.",
            param="method.type", code="invalid_value",
        )
    _check_metadata(req.metadata)
    for param, file_id in (("training_file", req.training_file),
                           ("validation_file", req.validation_file)):
        if file_id is None:
            continue
        try:
            f = get_file_row(session, caller, file_id, param=param)
        except NotFound:
            raise InvalidRequest(f"invalid {param}: {file_id}", param=param,
                                 code="invalid_file") from None
        if f.purpose != "fine-tune":
            raise InvalidRequest(f"File {file_id} has purpose {f.purpose!r}, not 'fine-tune'.",
                                 param=param, code="invalid_file")
    requested, where = _requested_hyperparameters(req, method_type)
    _check_fit(ctx, session, base_model, requested, where)
    job_id = new_id("ftjob")
    row = JobRow(
        id=job_id, organization=caller.organization, model=req.model,
        base_model=base_model if base_model != req.model else None,
        init_adapter_key=init_adapter_key,
        training_file=req.training_file, validation_file=req.validation_file,
        status=JobStatus.VALIDATING_FILES, **created(),
        hyperparameters={k: requested.get(k, "auto") for k in OPENAI_KEYS},
        method={"type": method_type, method_type: {"hyperparameters": requested}},
        suffix=req.suffix,
        seed=req.seed if req.seed is not None else secrets.randbelow(2147483647),
        job_metadata=req.metadata, integrations=None if req.integrations is None else [
            i.model_dump(exclude_none=True) for i in req.integrations],
        model_key=random_tail(12).lower(),
        result_files=[], events_cursor=0,
        data_checks=None if req.data_checks is None else req.data_checks.model_dump(),
    )
    session.add(row)
    session.flush()
    add_event(session, job_id, f"Created fine-tuning job: {job_id}")
    add_event(session, job_id, f"Validating training file: {req.training_file}")
    return to_object(row)


def _check_fit(ctx: AppContext, session: Session, base_model: str,
               requested: dict[str, Any], where: str) -> None:
    """Refuse what this deployment and this cluster can never run; with Ray unreachable or
    the model's config unreadable, only what the settings alone rule out."""
    model = model_facts(ctx, base_model)
    try:
        hyperparameters.check_limits(
            requested, hyperparameters.Limits.of(ctx.settings, base_model, model), model,
            cluster_view(ctx, session))
    except hyperparameters.OutOfLimits as e:
        param = "model" if e.param == "model" else f"{where}.{e.param}"
        raise InvalidRequest(str(e), param=param, code="invalid_value") from None


def model_facts(ctx: AppContext, base_model: str) -> ModelFacts | None:
    """The base model's shape from its ``config.json``; None when it cannot be read now
    (validation then fails the job naming the model)."""
    try:
        return ModelFacts.from_folder(tokenizer_dir(ctx.settings, ctx.blobs, base_model))
    except (BaseModelUnavailable, OSError, ValueError, KeyError) as e:
        log.warning("cannot read the config of base model %s: %s", base_model, e)
        return None


def cluster_view(ctx: AppContext, session: Session) -> ClusterView | None:
    """What the Ray cluster offers training, counting what openft's own runs hold as room
    (it comes back when they end); None while Ray cannot be reached."""
    nodes = ctx.ray.cluster()
    if nodes is None:
        return None
    st = ctx.settings
    return ClusterView.of(nodes, use_gpu=st.training_use_gpu,
                          cpus_per_worker=st.training_cpus_per_worker,
                          gpu_memory_gib=st.training_gpu_memory_gib,
                          held_workers=workers_of(session, running=True))


def workers_of(session: Session, running: bool) -> int:
    """Workers of the runs submitted to Ray: all of them (``running``), or those Ray may not
    have placed yet (the job still ``queued``), whose room Ray still reports free."""
    statuses = sorted(FOLLOWED) if running else [JobStatus.QUEUED]
    rows = session.scalars(select(JobRow).where(
        JobRow.ray_submission_id.is_not(None), JobRow.status.in_(statuses)))
    return sum(worker_count(row) for row in rows)


def worker_count(row: JobRow) -> int:
    """A job's resolved ``num_workers`` (1 before validation resolved it)."""
    workers = row.method_hyperparameters.get("num_workers")
    return workers if isinstance(workers, int) else 1


def _starting_model(session: Session, caller: Caller, model: str,
                    base_models: set[str]) -> tuple[str, str | None]:
    """``(base model, adapter to start from)``: a base model starts fresh; a fine-tuned
    model or checkpoint of the caller's organization continues from its adapter."""
    if model in base_models:
        return model, None
    job, adapter_key = owning_job(session, model)
    if job is None or job.organization != caller.organization or job.model_deleted_at:
        raise ModelNotFound(model)
    if job.method_hyperparameters.get("full_finetune"):
        raise InvalidRequest(f"Model {model} was fully fine-tuned; continued training starts "
                             "from LoRA adapters only.", param="model", code="invalid_value")
    return job.base, adapter_key


def _requested_hyperparameters(req: CreateJobRequest,
                               method_type: str) -> tuple[dict[str, Any], str]:
    """The hyperparameters as given, ``auto`` where absent, and where they were given.

    ``method.<type>.hyperparameters`` wins over the deprecated top-level field, as at OpenAI.
    """
    in_method = req.method.requested_hyperparameters() if req.method else None
    given = in_method or req.hyperparameters
    model = DpoHyperparameters if method_type == "dpo" else SupervisedHyperparameters
    values = model.model_validate(given.model_dump(exclude_unset=True) if given else {})
    where = f"method.{method_type}.hyperparameters" if in_method else "hyperparameters"
    return values.model_dump(mode="json"), where


def get_row(session: Session, caller: Caller, job_id: str,
            param: str = "fine_tuning_job_id") -> JobRow:
    row = session.get(JobRow, job_id)
    if row is None or row.organization != caller.organization:
        raise NotFound(f"No fine-tuning job found with id {job_id}.", param=param)
    return row


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if not metadata:
        return
    if len(metadata) > METADATA_MAX_KEYS:
        raise InvalidRequest(f"metadata may hold at most {METADATA_MAX_KEYS} keys.",
                             param="metadata", code="invalid_value")
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_MAX or len(value) > METADATA_VALUE_MAX:
            raise InvalidRequest(
                f"metadata keys are at most {METADATA_KEY_MAX} characters and values at most "
                f"{METADATA_VALUE_MAX}; {key[:70]!r} is too long.",
                param=f"metadata.{key[:64]}", code="invalid_value")


def list_rows(session: Session, caller: Caller, limit: int, after: str | None,
              metadata: dict[str, str] | None = None) -> list[JobRow]:
    q = select(JobRow).where(JobRow.organization == caller.organization)
    for key, value in (metadata or {}).items():
        q = q.where(JobRow.job_metadata[key].as_string() == value)
    if after:
        anchor = get_row(session, caller, after, param="after")
        q = q.where((JobRow.created_seq < anchor.created_seq)
                    | ((JobRow.created_seq == anchor.created_seq) & (JobRow.id < anchor.id)))
    q = q.order_by(JobRow.created_seq.desc(), JobRow.id.desc()).limit(limit + 1)
    return list(session.scalars(q))


def cancel(session: Session, caller: Caller, job_id: str) -> FineTuningJob:
    """Record the cancellation; the run is stopped once it is committed
    (:func:`stop_run`). Stopping first would leave a stopped run under a job the database
    still calls running when the commit fails (issue 16): it then ends failed, not cancelled.
    ``run_stop_pending`` keeps the stop owed until Ray has taken it: owed by every job that
    may have a run, recorded or not (Ray may have taken one whose launch never committed: the
    process died, or the cancel landed meanwhile), read from the row as the update finds it."""
    row = get_row(session, caller, job_id)
    if row.status not in CANCELLABLE:
        raise Conflict(f"Job {job_id} has already {row.status}; it cannot be cancelled.",
                       param="fine_tuning_job_id", code="invalid_state")
    return _move(session, row, CANCELLABLE, JobStatus.CANCELLED, "Fine-tuning job cancelled",
                 finished_at=now(), run_stop_pending=JobRow.status.in_(sorted(FOLLOWED)))


def submission_id(row: JobRow) -> str:
    """The Ray submission id the job's next launch uses; while no run is recorded, also the
    one a launch may have submitted unrecorded (its process died before the commit). Each run
    (a resume, a recovery) is a new Ray job: Ray refuses a reused id, which is also what keeps
    a run from being launched twice."""
    return f"openft-{row.id}" + (f"-r{row.run_count}" if row.run_count else "")


def stop_run(ctx: AppContext, job_id: str) -> bool:
    """Stop the Ray run of a cancelled job whose stop is owed; whether it is done. Ray away:
    not yet, and the scheduler tries again each tick (``run_stop_pending`` stays set). With
    no run recorded, the one a launch may have submitted unrecorded is stopped (Ray answers
    404, taken as done, when there is none)."""
    with ctx.db.session() as s:
        row = s.get(JobRow, job_id)
        if row is None or not row.run_stop_pending:
            return True
        submission = row.ray_submission_id or submission_id(row)
    try:
        ctx.ray.stop(submission)
    except Exception as e:  # noqa: BLE001 - any failure to reach Ray: the stop stays owed
        log.warning("could not stop the run of cancelled job %s yet: %s", job_id, e)
        return False
    with ctx.db.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(run_stop_pending=False))
    return True


PAUSE_REQUEST = b'{"action": "pause"}'


def _move(session: Session, row: JobRow, from_states: Iterable[JobStatus], to: JobStatus,
          message: str, **fields: Any) -> FineTuningJob:
    """A user-asked transition; a racing scheduler that got there first makes it a 400."""
    if not transition(session, row.id, from_states, to, message, **fields):
        raise Conflict(f"Job {row.id} changed state; try again.", param="fine_tuning_job_id",
                       code="invalid_state")
    session.refresh(row)
    return to_object(row)


def pause(session: Session, caller: Caller, job_id: str) -> tuple[FineTuningJob, bool]:
    """Record the pause; and whether it has a run to ask to checkpoint and stop
    (:func:`request_pause`, once committed; the scheduler asks again while a paused job's
    run is alive). Asking first would stop a run the database still calls running when the
    commit fails."""
    row = get_row(session, caller, job_id)
    if row.status not in PAUSABLE:
        raise Conflict(f"Job {job_id} is {row.status}; only a queued or running job can be "
                       "paused.", param="fine_tuning_job_id", code="invalid_state")
    has_run = row.ray_submission_id is not None
    return _move(session, row, PAUSABLE, JobStatus.PAUSED, "Fine-tuning job paused"), has_run


def request_pause(blobs: BlobStore, job_id: str) -> None:
    """The run's control object: the run checkpoints and stops when it reads it."""
    blobs.put(control_key(job_id), PAUSE_REQUEST, "application/json")


def resume(session: Session, blobs: BlobStore, caller: Caller, job_id: str) -> FineTuningJob:
    """Queue the job again; its next run starts from the checkpoint the pause wrote."""
    row = get_row(session, caller, job_id)
    if row.status not in RESUMABLE:
        raise Conflict(f"Job {job_id} is {row.status}; only a paused job can be resumed.",
                       param="fine_tuning_job_id", code="invalid_state")
    blobs.delete(control_key(job_id))
    return _move(session, row, RESUMABLE, JobStatus.QUEUED, "Fine-tuning job resumed")


def _newest_first(session: Session, table: type[JobEventRow] | type[CheckpointRow],
                  job_id: str, limit: int, after: str | None, what: str) -> list[Any]:
    """A job's events or checkpoints, newest first, after the cursor ``after`` (an id)."""
    q = select(table).where(table.job_id == job_id)
    if after:
        q = q.where(table.seq < _cursor_seq(session, table, job_id, after, what))
    return list(session.scalars(q.order_by(table.seq.desc()).limit(limit + 1)))


def _seq_of(session: Session, table: type[JobEventRow] | type[CheckpointRow], job_id: str,
            row_id: str) -> int | None:
    """Where a job's event or checkpoint stands in the job's order; None if it is not one."""
    return session.scalar(select(table.seq).where(table.id == row_id, table.job_id == job_id))


def _cursor_seq(session: Session, table: type[JobEventRow] | type[CheckpointRow], job_id: str,
                after: str, what: str) -> int:
    """The ``seq`` of the cursor ``after``; an id that is not the job's is a 404, as OpenAI's."""
    seq = _seq_of(session, table, job_id, after)
    if seq is None:
        raise NotFound(f"No {what} {after} in job {job_id}.", param="after")
    return seq


def list_events(session: Session, caller: Caller, job_id: str, limit: int,
                after: str | None) -> list[JobEvent]:
    get_row(session, caller, job_id)
    rows = _newest_first(session, JobEventRow, job_id, limit, after, "event")
    return [event_object(r) for r in rows]


def event_object(r: JobEventRow) -> JobEvent:
    return JobEvent(id=r.id, created_at=r.created_at, level=r.level, message=r.message,
                    type=r.type, data=r.data)


def event_position(session: Session, caller: Caller, job_id: str, after: str | None,
                   last_event_id: str | None) -> int:
    """Where a live stream of the caller's job starts: the ``seq`` of the event it resumes
    after (0: from the first). ``Last-Event-ID`` wins over ``after``: a reconnecting
    EventSource sends it with the URL it first opened. The list's order is ``seq``, the
    insertion order, so "after" is exact even among events of the same second."""
    get_row(session, caller, job_id)
    if last_event_id is not None:
        seq = _seq_of(session, JobEventRow, job_id, last_event_id)
        if seq is None:
            raise InvalidRequest(f"Last-Event-ID {last_event_id} is not an event of job "
                                 f"{job_id}.", param="Last-Event-ID", code="invalid_value")
        return seq
    return _cursor_seq(session, JobEventRow, job_id, after, "event") if after else 0


def events_since(session: Session, job_id: str, after_seq: int,
                 limit: int) -> tuple[str | None, list[tuple[int, JobEvent]]]:
    """The job's status, then up to ``limit`` of its events after ``after_seq``, oldest
    first, each with its ``seq``. The status is read first: events a settling commit adds
    are then visible to the second read, so a settled status with no events left means
    the stream has sent everything. Every writer of a job's events holds the job's row lock
    (the scheduler's claim, a transition's update), so they commit in ``seq`` order and a
    later poll never finds one behind the cursor."""
    status = session.scalar(select(JobRow.status).where(JobRow.id == job_id))
    rows = session.scalars(select(JobEventRow).where(
        JobEventRow.job_id == job_id, JobEventRow.seq > after_seq)
        .order_by(JobEventRow.seq).limit(limit))
    return status, [(r.seq, event_object(r)) for r in rows]


def numbers_only(metrics: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's metrics without the ones a diverged run could not compute (stored as
    null): OpenAI types each as a number. The job's warning event says it diverged."""
    return {k: v for k, v in metrics.items() if v is not None}


def list_checkpoints(session: Session, caller: Caller, job_id: str, limit: int,
                     after: str | None) -> list[JobCheckpoint]:
    get_row(session, caller, job_id)
    rows = _newest_first(session, CheckpointRow, job_id, limit, after, "checkpoint")
    return [JobCheckpoint(id=r.id, created_at=r.created_at,
                          fine_tuned_model_checkpoint=r.fine_tuned_model_checkpoint,
                          fine_tuning_job_id=r.job_id, metrics=numbers_only(r.metrics),
                          step_number=r.step_number) for r in rows]
