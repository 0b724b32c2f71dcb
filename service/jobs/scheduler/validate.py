"""Stage one: ``validating_files`` -> ``queued`` (the spec in the bucket) or ``failed``.

The files are streamed from the bucket line by line (each line capped at
``OPENFT_MAX_LINE_BYTES``), every conversation is rendered with the base model's own chat
template and counted, the ``auto`` hyperparameters are resolved from the counts, and the run's
:class:`TrainingSpec` is written before the row says ``queued``. The same pass makes the data
report (:mod:`service.files.report`: trained tokens, duplicates, leaked validation rows,
likely secrets), summarised in one event; a job's ``data_checks`` fail it on what the report
finds. Only counts and a few bytes of hash a row are kept, so a file of any size is validated
in small memory. Validations run beside the scheduler's tick
(:mod:`.validation_pool`), so a large file holds up only its own job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session

from contract.bucket import adapter_prefix, file_key, spec_key
from contract.chat_format import InvalidChatFile
from contract.hyperparameters import Hyperparameters
from contract.lines import split_lines
from contract.spec import S3Location, TrainingSpec
from service.base_models.service import BaseModelUnavailable, tokenizer_dir
from service.context import AppContext
from service.db import JobRow
from service.files.report import estimate as report_estimate
from service.files.report import summary as report_summary
from service.files.report.build import FileScan, scan_file
from service.ids import now
from service.jobs import hyperparameters
from service.jobs.capacity import ClusterView, ModelFacts
from service.jobs.scheduler.rows import claim
from service.jobs.service import cluster_view, model_facts
from service.jobs.token_count import ChatTokenCounter
from service.lifecycle import JobStatus, add_event, transition
from service.settings import Settings

FILE_PARAMS = ("training_file", "validation_file")
log = logging.getLogger("openft.scheduler")


class Stopped(Exception):
    """The process is shutting down: the validation is dropped, its transaction rolled back,
    and the job stays ``validating_files`` for the next process to validate."""


def validate(ctx: AppContext, job_id: str, stop: threading.Event | None = None) -> None:
    """Validate one job, holding its row (:func:`claim`) until the job is queued or failed.

    ``stop`` set makes the validation give up between two chunks of the file
    (:class:`Stopped`): a shutdown never waits for a 512 MB file.
    """
    with ctx.db.session() as s:
        job = claim(s, job_id)
        if job is None or job.status != JobStatus.VALIDATING_FILES:
            return
        model = model_facts(ctx, job.base)
        limits = hyperparameters.Limits.of(ctx.settings, job.base, model)
        scans: dict[str, FileScan] = {}
        for param in FILE_PARAMS:
            file_id = getattr(job, param)
            if file_id is None:
                continue
            try:
                scans[param] = _scan_file(ctx, job, file_key(file_id), stop,
                                          _scan_limit(job, limits), scans.get("training_file"))
            except InvalidChatFile as e:
                _fail(s, job, e, param)
                return
            except BaseModelUnavailable as e:
                _fail_unavailable(s, job, e)
                return
        training = scans["training_file"]
        error = report_summary.check_failure(
            job.data_checks, {p: getattr(job, p) for p in scans}, scans)
        if error is not None:
            _announce_report(ctx, s, job, scans,
                             _resolve(job, training, limits, model, cluster=None).n_epochs)
            transition(s, job.id, [JobStatus.VALIDATING_FILES], JobStatus.FAILED,
                       error["message"], level="error", finished_at=now(), error=error)
            return
        cluster = cluster_view(ctx, s)
        if cluster is None:  # the run's shape depends on the cluster: wait until Ray answers
            log.warning("Ray cannot be reached; job %s waits to be validated", job.id)
            return
        resolved = _resolve(job, training, limits, model, cluster)
        spec = training_spec(ctx.settings, job, resolved, use_gpu=cluster.use_gpu)
        # The spec is in S3 before the row says queued (results before pointers).
        ctx.blobs.put(spec_key(job.id), spec.model_dump_json(indent=2).encode(),
                      "application/json")
        summary, truncated = _token_summary(ctx.settings, training, resolved)
        method = {"type": job.method_type,
                  job.method_type: {"hyperparameters": resolved.method_dict()}}
        if transition(s, job.id, [JobStatus.VALIDATING_FILES], JobStatus.QUEUED,
                      "Files validated, moving job to queued state",
                      hyperparameters=resolved.openai_dict(), method=method):
            _announce_summary(s, job.id, summary, truncated, resolved)
            _announce_report(ctx, s, job, scans, resolved.n_epochs)


def _scan_limit(job: JobRow, limits: hyperparameters.Limits) -> int:
    """The ``max_seq_length`` the report counts trained tokens within: the one asked for, or
    the model's context. ``auto`` resolves to the longest example rounded up, capped at the
    context, so it cuts exactly the rows the context cuts, at the same length: the scan's
    counts are the resolved run's."""
    asked = job.method_hyperparameters.get("max_seq_length")
    return asked if isinstance(asked, int) else limits.max_seq_length


def _announce_report(ctx: AppContext, s: Session, job: JobRow, scans: dict[str, FileScan],
                     epochs: int) -> None:
    """The data report's summary event (docs/api.md, "Data report")."""
    training = scans["training_file"]
    guess = report_estimate.estimate(
        report_estimate.measured_runs(s, ctx.blobs, job.base),
        training.trained + training.untrained, epochs)
    message, data = report_summary.summary(training, scans.get("validation_file"), guess)
    # info, whatever it found: warnings are for what the run itself did wrong (a truncation,
    # a final model worse than a checkpoint), and a job may opt in to failing instead.
    add_event(s, job.id, message, data=data)


def _resolve(job: JobRow, training: FileScan, limits: hyperparameters.Limits,
             model: ModelFacts | None, cluster: ClusterView | None) -> Hyperparameters:
    """The ``auto`` rule fed with the longest example, the model's shape and the cluster."""
    return hyperparameters.resolve(
        job.method_hyperparameters, training.rows, limits, job.method_type,
        longest_example=training.longest, model=model, cluster=cluster)


def training_spec(settings: Settings, job: JobRow, resolved: Hyperparameters,
                  use_gpu: bool = False) -> TrainingSpec:
    return TrainingSpec(
        job_id=job.id, base_model_id=job.base,
        base_model_path=settings.base_model_configs()[job.base].volume_path,
        training_file_key=file_key(job.training_file),
        validation_file_key=file_key(job.validation_file) if job.validation_file else None,
        model_key=job.model_key, method=job.method_type, hyperparameters=resolved,
        seed=job.seed,
        cpus_per_worker=settings.training_cpus_per_worker, use_gpu=use_gpu,
        init_adapter_key=adapter_prefix(job.init_adapter_key) if job.init_adapter_key else None,
        s3=S3Location(endpoint_url=settings.resolved_s3_endpoint_url,
                      bucket=settings.s3_bucket, region=settings.s3_region),
    )


def _scan_file(ctx: AppContext, job: JobRow, key: str, stop: threading.Event | None,
               limit: int, training: FileScan | None) -> FileScan:
    """The data report's pass over one file, read as a stream: one line at a time is held,
    plus a few bytes of counts and hashes a row, whatever the file's size.

    Each conversation (two per DPO line) is rendered with the base model's own template (the
    API holds only its tokenizer files) and its tokens counted, those carrying loss apart; a
    line the template refuses (some refuse tool-call ids or several calls per turn) fails
    validation here, naming the line, rather than the run later. Errors are reported in the
    order of a check of the whole file before any count: a bad line anywhere, then too few
    examples, then the model or its template (:func:`service.files.report.build.scan_file`).
    A validation file is compared with the ``training`` file's scan for leaked rows.
    """
    lines = split_lines(_until(stop, ctx.blobs.iter_chunks(key)), ctx.settings.max_line_bytes)
    return scan_file(
        lines, lambda: ChatTokenCounter.for_model(
            tokenizer_dir(ctx.settings, ctx.blobs, job.base)),
        method=job.method_type, max_seq_length=limit, base=job.base,
        against=training.index if training is not None else None)


def _until(stop: threading.Event | None, chunks: Iterator[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        if stop is not None and stop.is_set():
            raise Stopped
        yield chunk


def _token_summary(settings: Settings, training: FileScan,
                   resolved: Hyperparameters) -> tuple[dict[str, Any], tuple[int, list[int]]]:
    """The summary event's data, and the lines that will be truncated (how many, the first
    100): the scan's, whose limit cuts as ``resolved.max_seq_length`` does
    (:func:`_scan_limit`)."""
    n_tokens = training.trained + training.untrained
    trained = n_tokens * resolved.n_epochs
    summary = {
        "n_examples": training.rows, "n_tokens": n_tokens,
        "estimated_trained_tokens": trained,
        "estimated_duration_s": int(settings.training_startup_s
                                    + trained / settings.training_tokens_per_s),
        "max_seq_length": resolved.max_seq_length,
    }
    return summary, (training.truncated, training.truncated_lines)


def _announce_summary(s: Session, job_id: str, summary: dict[str, Any],
                      truncated: tuple[int, list[int]], resolved: Hyperparameters) -> None:
    n_truncated, first = truncated
    if n_truncated:
        shown = ", ".join(map(str, first[:10])) + (", ..." if n_truncated > 10 else "")
        add_event(s, job_id, f"{n_truncated} example(s) exceed {summary['max_seq_length']}"
                  f" tokens and will be truncated (lines {shown})", level="warn",
                  data={"truncated_lines": first})
    add_event(s, job_id,
              f"Training file has {summary['n_examples']} examples and "
              f"{summary['n_tokens']} tokens; about {summary['estimated_trained_tokens']} "
              f"tokens will be trained over {resolved.n_epochs} epochs, estimated "
              f"{summary['estimated_duration_s']} s",
              data={**summary, **resolved.openai_dict()})


def _fail_unavailable(s: Session, job: JobRow, e: BaseModelUnavailable) -> None:
    """Fail once, naming the model: retrying every tick would only repeat the traceback."""
    message = str(e)
    transition(s, job.id, [JobStatus.VALIDATING_FILES], JobStatus.FAILED, message,
               level="error", finished_at=now(),
               error={"code": "model_not_available", "message": message, "param": "model"})


def _fail(s: Session, job: JobRow, e: InvalidChatFile, param: str) -> None:
    name = "Training" if param == "training_file" else "Validation"
    code = e.code if param == "training_file" else e.code.replace("training", "validation")
    message = f"{name} file {getattr(job, param)} is invalid. {e}"
    transition(s, job.id, [JobStatus.VALIDATING_FILES], JobStatus.FAILED, message,
               level="error", finished_at=now(),
               error={"code": code, "message": message, "param": param})
