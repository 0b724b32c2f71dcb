"""The scheduler loop: validate, queue, launch on Ray, ingest progress, settle.

It runs inside every API process. Everything it knows comes from the database, the bucket
and Ray, so a restarted process carries on where the last one stopped (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import logging
import math
import sys
from typing import Any

from jinja2 import TemplateError
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from service.context import AppContext
from service.db import CheckpointRow, JobEventRow, JobRow
from service.files.service import file_key, register
from service.ids import new_id, now
from service.jobs import hyperparameters
from service.jobs.naming import checkpoint_name, fine_tuned_model_name
from service.jobs.service import add_event, transition
from service.jobs.token_count import ChatTokenCounter
from service.webhooks import enqueue_settled
from contract.chat_format import InvalidChatFile, as_conversations, read_numbered_examples
from contract.bucket import adapter_prefix, control_key, event_batch_key, events_prefix, spec_key
from contract.events import TrainingEvent
from contract.spec import S3Location, TrainingSpec

log = logging.getLogger("openft.scheduler")
FOLLOWED = ("queued", "running", "paused")
"""States in which a job may have a Ray run to watch."""
RESULT_COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss",
                  "valid_mean_token_accuracy"]


class Scheduler:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    async def run_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # one bad tick must not stop the loop
                log.exception("scheduler tick failed")
            await asyncio.sleep(self.ctx.settings.scheduler_interval_s)

    def tick(self) -> None:
        for job_id in self._ids("validating_files"):
            self._guarded(self.validate, job_id)
        self.launch_queued()
        for job_id in self._ids(*FOLLOWED, submitted=True):
            self._guarded(self.follow, job_id)
        with self.ctx.db.session() as s:
            enqueue_settled(s, self.ctx.settings)

    @staticmethod
    def _guarded(step, job_id: str) -> None:
        """One job's trouble (S3 or Ray briefly away) must not hold up the others."""
        try:
            step(job_id)
        except Exception:
            log.exception("scheduler step %s failed for %s; retrying next tick",
                          step.__name__, job_id)

    def _ids(self, *states: str, submitted: bool = False) -> list[str]:
        with self.ctx.db.session() as s:
            q = select(JobRow.id).where(JobRow.status.in_(states))
            if submitted:
                q = q.where(JobRow.ray_submission_id.is_not(None))
            return list(s.scalars(q.order_by(JobRow.created_at)))

    # -- validating_files -> queued | failed ---------------------------------------------
    def validate(self, job_id: str) -> None:
        ctx = self.ctx
        with ctx.db.session() as s:
            job = _claim(s, job_id)
            if job is None or job.status != "validating_files":
                return
            counts: dict[str, list[tuple[int, int]]] = {}
            for param in ("training_file", "validation_file"):
                file_id = getattr(job, param)
                if file_id is None:
                    continue
                try:
                    numbered = read_numbered_examples(ctx.blobs.iter_lines(file_key(file_id)),
                                                      job.method_type)
                    counts[param] = self._count_tokens(job, numbered)
                except InvalidChatFile as e:
                    self._fail_validation(s, job, e, param)
                    return
            n_examples = len({line for line, _ in counts["training_file"]})
            resolved = hyperparameters.resolve(job.method_hyperparameters, n_examples,
                                               hyperparameters.Limits.of(ctx.settings),
                                               job.method_type)
            spec = self._spec(job, resolved)
            # The spec is in S3 before the row says queued (results before pointers).
            ctx.blobs.put(spec_key(job.id), spec.model_dump_json(indent=2).encode(),
                          "application/json")
            summary = self._token_summary(counts["training_file"], n_examples, resolved)
            method = {"type": job.method_type,
                      job.method_type: {"hyperparameters": resolved.method_dict()}}
            if transition(s, job.id, ("validating_files",), "queued",
                          "Files validated, moving job to queued state",
                          hyperparameters=resolved.as_dict(), method=method):
                self._announce_summary(s, job.id, summary, resolved)

    def _spec(self, job: JobRow, resolved: hyperparameters.Resolved) -> TrainingSpec:
        settings = self.ctx.settings
        return TrainingSpec(
            job_id=job.id, base_model_id=job.base,
            base_model_path=str(settings.base_model_dirs()[job.base]),
            training_file_key=file_key(job.training_file),
            validation_file_key=file_key(job.validation_file) if job.validation_file else None,
            model_key=job.model_key, n_epochs=resolved.n_epochs,
            batch_size=resolved.batch_size, learning_rate=resolved.learning_rate,
            seed=job.seed, max_seq_length=resolved.max_seq_length,
            lora=LoraSpec(r=resolved.lora_r, alpha=resolved.lora_alpha,
                          dropout=resolved.lora_dropout,
                          target_modules=resolved.lora_target_modules),
            num_workers=resolved.num_workers,
            cpus_per_worker=settings.training_cpus_per_worker,
            use_gpu=settings.training_use_gpu, zero_stage=resolved.zero_stage,
            method=job.method_type, dpo_beta=resolved.beta or 0.1,
            lr_scheduler=resolved.lr_scheduler, warmup_ratio=resolved.warmup_ratio,
            packing=resolved.packing, gradient_checkpointing=resolved.gradient_checkpointing,
            full_finetune=resolved.full_finetune,
            init_adapter_key=adapter_prefix(job.init_adapter_key)
            if job.init_adapter_key else None,
            s3=S3Location(endpoint_url=settings.resolved_s3_endpoint_url,
                          bucket=settings.s3_bucket, region=settings.s3_region),
        )

    def _count_tokens(self, job: JobRow,
                      examples: list[tuple[int, dict]]) -> list[tuple[int, int]]:
        """``(line, tokens)`` of every conversation the file trains on (two per DPO line),
        rendered with the base model's own template.

        A line the template refuses (some refuse tool-call ids or several calls per turn)
        fails validation here, naming the line, rather than the run later.
        """
        counter = ChatTokenCounter.for_model(self.ctx.settings.base_model_dirs()[job.base])
        counts = []
        for line, example in examples:
            for conversation in as_conversations(example, job.method_type):
                try:
                    counts.append((line, counter.count(conversation)))
                except (ValueError, TypeError, TemplateError) as e:
                    raise InvalidChatFile(line, f"cannot be rendered by the chat template of "
                                          f"{job.base}: {e}") from None
        return counts

    def _token_summary(self, counts: list[tuple[int, int]], n_examples: int,
                       resolved: hyperparameters.Resolved) -> dict:
        settings = self.ctx.settings
        limit = resolved.max_seq_length
        n_tokens = sum(min(c, limit) for _, c in counts)
        trained = n_tokens * resolved.n_epochs
        return {
            "n_examples": n_examples, "n_tokens": n_tokens,
            "estimated_trained_tokens": trained,
            "estimated_duration_s": int(settings.training_startup_s
                                        + trained / settings.training_tokens_per_s),
            "max_seq_length": limit,
            "truncated_lines": sorted({line for line, c in counts if c > limit}),
        }

    @staticmethod
    def _announce_summary(s: Session, job_id: str, summary: dict,
                          resolved: hyperparameters.Resolved) -> None:
        truncated = summary.pop("truncated_lines")
        if truncated:
            shown = ", ".join(map(str, truncated[:10])) + (", ..." if len(truncated) > 10
                                                            else "")
            add_event(s, job_id, f"{len(truncated)} example(s) exceed {summary['max_seq_length']}"
                      f" tokens and will be truncated (lines {shown})", level="warn",
                      data={"truncated_lines": truncated[:100]})
        add_event(s, job_id,
                  f"Training file has {summary['n_examples']} examples and "
                  f"{summary['n_tokens']} tokens; about {summary['estimated_trained_tokens']} "
                  f"tokens will be trained over {resolved.n_epochs} epochs, estimated "
                  f"{summary['estimated_duration_s']} s",
                  data={**summary, **resolved.as_dict()})

    def _fail_validation(self, s: Session, job: JobRow, e: InvalidChatFile, param: str) -> None:
        name = "Training" if param == "training_file" else "Validation"
        code = e.code if param == "training_file" else e.code.replace("training", "validation")
        message = f"{name} file {getattr(job, param)} is invalid. {e}"
        transition(s, job.id, ("validating_files",), "failed", message, level="error",
                   finished_at=now(), error={"code": code, "message": message, "param": param})

    # -- queued -> submitted to Ray -------------------------------------------------------
    def launch_queued(self) -> None:
        ctx = self.ctx
        with ctx.db.session() as s:
            _serialize_launches(s)
            busy = s.scalar(select(func.count()).select_from(JobRow).where(
                JobRow.ray_submission_id.is_not(None), JobRow.status.in_(FOLLOWED)))
            free = ctx.settings.max_concurrent_jobs - (busy or 0)
            if free <= 0:
                return
            waiting = s.scalars(
                select(JobRow).where(JobRow.status == "queued",
                                     JobRow.ray_submission_id.is_(None))
                .order_by(JobRow.created_at).limit(free).with_for_update(skip_locked=True)
            ).all()
            for job in waiting:
                submission_id = f"openft-{job.id}" + (f"-r{job.run_count}" if job.run_count
                                                      else "")
                if job.resume_from:
                    self._point_spec_at_checkpoint(job)
                try:
                    ctx.ray.submit(
                        submission_id,
                        entrypoint=(f"{sys.executable} -m training.driver "
                                    f"s3://{ctx.settings.s3_bucket}/{spec_key(job.id)}"),
                        env_vars=_training_env(ctx),
                        metadata={"openft_job_id": job.id},
                    )
                except Exception as e:  # a fresh head refuses for a few seconds: next tick
                    log.warning("could not submit %s to Ray yet: %s", job.id, e)
                    continue
                job.ray_submission_id = submission_id
                job.run_count += 1
                add_event(s, job.id, "Submitted the training run to Ray" + (
                    f", resuming from {job.resume_from}" if job.resume_from else ""))

    def _point_spec_at_checkpoint(self, job: JobRow) -> None:
        blobs = self.ctx.blobs
        spec = TrainingSpec.model_validate_json(blobs.get(spec_key(job.id)))
        spec = spec.model_copy(update={"resume_from": job.resume_from})
        blobs.put(spec_key(job.id), spec.model_dump_json(indent=2).encode(), "application/json")

    # -- queued/running/paused with a run -> running | paused | succeeded | failed ---------
    def follow(self, job_id: str) -> None:
        ctx = self.ctx
        with ctx.db.session() as s:
            job = _claim(s, job_id)
            if job is None or job.status not in FOLLOWED or not job.ray_submission_id:
                return
            self._ingest(s, job)
            state = ctx.ray.status(job.ray_submission_id)
            if state is None:
                self._recover_lost_run(s, job)
                return
            status, ray_message = state
            if status == "RUNNING" and job.status == "queued":
                transition(s, job.id, ("queued",), "running", "Fine-tuning job started",
                           started_at=job.started_at or now())
            elif status == "SUCCEEDED":
                self._ingest(s, job)
                if job.trained_tokens is not None:
                    self._succeed(s, job)
                elif job.resume_from and job.status in ("paused", "queued"):
                    self._release_paused(s, job)
                else:
                    self._fail(s, job, "The training run ended without producing a model.")
            elif status == "FAILED":
                self._ingest(s, job)
                if job.error:
                    transition(s, job.id, FOLLOWED, "failed",
                               job.error.get("message", "Training failed"), level="error",
                               finished_at=now())
                else:
                    self._fail(s, job, "Training failed. " + ray_message[-300:])
            elif status == "STOPPED":
                self._fail(s, job, "The training run was stopped outside openft.")

    def _recover_lost_run(self, s: Session, job: JobRow) -> None:
        """Ray forgot the run (the cluster restarted): go on from its last checkpoint if any."""
        latest = s.scalar(select(CheckpointRow.state_key).where(
            CheckpointRow.job_id == job.id, CheckpointRow.state_key.is_not(None)
        ).order_by(CheckpointRow.step_number.desc()).limit(1))
        if not latest:
            self._fail(s, job, "The training run was lost (Ray no longer knows it).")
            return
        job.resume_from, job.ray_submission_id = latest, None
        if job.status == "running":
            transition(s, job.id, ("running",), "queued",
                       f"The training run was lost; resuming from checkpoint {latest}",
                       level="warn")

    def _release_paused(self, s: Session, job: JobRow) -> None:
        """The run checkpointed and ended: its Ray workers are gone; resume starts anew."""
        job.ray_submission_id = None
        job.estimated_finish = None
        add_event(s, job.id, f"Training stopped at checkpoint {job.resume_from}; "
                  "resume continues from there")

    def _ingest(self, s: Session, job: JobRow) -> None:
        """Copy new event batches from the bucket into the database, each batch once."""
        start_after = event_batch_key(job.id, job.events_cursor - 1) if job.events_cursor else ""
        for key in self.ctx.blobs.list_keys(events_prefix(job.id), start_after=start_after):
            if key != event_batch_key(job.id, job.events_cursor):
                break  # a gap: the batch before it is still being written
            for line in self.ctx.blobs.get(key).splitlines():
                if line.strip():
                    self._apply(s, job, TrainingEvent.model_validate_json(line))
            job.events_cursor += 1
        s.flush()

    def _apply(self, s: Session, job: JobRow, ev: TrainingEvent) -> None:
        data = json_safe(ev.data or {})
        if ev.type == "metrics":
            self._estimate_finish(job, data)
        elif ev.type == "checkpoint":
            self._record_checkpoint(s, job, data, ev.created_at)
        elif ev.type == "paused":
            job.resume_from = data.get("checkpoint_key")
        elif ev.type == "result":
            job.trained_tokens = int(data.get("trained_tokens", 0))
        elif ev.type == "error":
            job.error = {"code": data.get("code", "server_error"),
                         "message": data.get("message", ev.message),
                         "param": data.get("param")}
        if ev.type == "result":
            return  # settling announces the model, by its public name
        add_event(s, job.id, ev.message, level=ev.level,
                  type_="metrics" if ev.type == "metrics" else "message",
                  data=data if ev.type == "metrics" else None, created_at=ev.created_at)

    @staticmethod
    def _estimate_finish(job: JobRow, data: dict) -> None:
        step, total = data.get("step"), data.get("total_steps")
        if job.started_at and step and total:
            elapsed = max(now() - job.started_at, 1)
            job.estimated_finish = now() + int(elapsed / step * max(total - step, 0))

    def _record_checkpoint(self, s: Session, job: JobRow, data: dict, created_at: int) -> None:
        step = int(data.get("step", 0))
        name = fine_tuned_model_name(job.base, job.organization, job.suffix, job.model_key)
        adapter = (data.get("adapter_key") or "").removeprefix("models/").strip("/") or None
        existing = s.scalar(select(CheckpointRow).where(
            CheckpointRow.job_id == job.id, CheckpointRow.step_number == step))
        if existing is not None:  # a resumed run wrote this step again: keep the newest
            existing.metrics = data.get("metrics") or existing.metrics
            existing.adapter_key = adapter or existing.adapter_key
            existing.state_key = data.get("checkpoint_key") or existing.state_key
            return
        s.add(CheckpointRow(
            id=new_id("ftckpt"), job_id=job.id, created_at=created_at, step_number=step,
            fine_tuned_model_checkpoint=checkpoint_name(name, step),
            metrics=data.get("metrics") or {"step": step}, adapter_key=adapter,
            state_key=data.get("checkpoint_key"),
        ))

    def _succeed(self, s: Session, job: JobRow) -> None:
        if job.trained_tokens is None:
            self._fail(s, job, "The training run ended without producing a model.")
            return
        name = fine_tuned_model_name(job.base, job.organization, job.suffix, job.model_key)
        self.ctx.blobs.delete(control_key(job.id))  # a pause that came too late to matter
        metrics = self._metric_rows(s, job.id)
        result_file = self._write_results(s, job, metrics)
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
        transition(s, job.id, FOLLOWED, "succeeded",
                   "The job has successfully completed", finished_at=now(),
                   fine_tuned_model=name, result_files=[result_file])
        add_event(s, job.id, f"New fine-tuned model created: {name}")

    def _metric_rows(self, s: Session, job_id: str) -> list[dict]:
        rows = s.scalars(select(JobEventRow.data).where(
            JobEventRow.job_id == job_id, JobEventRow.type == "metrics"
        ).order_by(JobEventRow.seq))
        # A run resumed after a loss repeats the steps since its checkpoint: keep the last.
        by_step = {r.get("step"): r for r in rows if r}
        return sorted(by_step.values(), key=lambda r: r.get("step") or 0)

    def _write_results(self, s: Session, job: JobRow, metrics: list[dict]) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(RESULT_COLUMNS)
        for m in metrics:
            writer.writerow([m.get("step"), m.get("train_loss"),
                             m.get("train_mean_token_accuracy", m.get("train_accuracy")),
                             m.get("valid_loss"), m.get("valid_mean_token_accuracy")])
        # OpenAI serves result files base64-encoded and client code decodes them: so do we.
        body = base64.b64encode(buf.getvalue().encode())
        key = f"jobs/{job.id}/results.csv"
        self.ctx.blobs.put(key, body, "text/csv")
        row = register(s, job.organization, key, "step_metrics.csv", "fine-tune-results",
                       len(body))
        return row.id

    def _fail(self, s: Session, job: JobRow, message: str) -> None:
        transition(s, job.id, FOLLOWED, "failed", message, level="error",
                   finished_at=now(),
                   error={"code": "server_error", "message": message, "param": None})


def json_safe(value: Any) -> Any:
    """NaN/inf (a diverged loss) become null: JSON columns and clients cannot hold them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


LAUNCH_LOCK_KEY = 0x6F70656E6674  # "openft": one PostgreSQL advisory lock for launches


def _serialize_launches(s: Session) -> None:
    """Replicas take turns counting running jobs and launching, so together they respect
    ``max_concurrent_jobs``. SQLite serves one process and needs no lock."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LAUNCH_LOCK_KEY})


def _claim(s: Session, job_id: str) -> JobRow | None:
    """The job row, locked for this transaction; None if another API replica holds it.

    With several API processes on PostgreSQL, only the one holding the row lock validates,
    ingests or settles the job in a tick, so events are never ingested twice.
    """
    return s.scalar(select(JobRow).where(JobRow.id == job_id)
                    .with_for_update(skip_locked=True))


def _training_env(ctx: AppContext) -> dict[str, str]:
    """What the training run needs to reach the bucket; travels in Ray's runtime_env."""
    st = ctx.settings
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


