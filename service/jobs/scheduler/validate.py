"""Stage one: ``validating_files`` -> ``queued`` (the spec in the bucket) or ``failed``.

The files are streamed from the bucket line by line (each line capped at
``OPENFT_MAX_LINE_BYTES``), every conversation is rendered with the base model's own chat
template and counted, the ``auto`` hyperparameters are resolved from the counts, and the run's
:class:`TrainingSpec` is written before the row says ``queued``. Only the counts are kept, so
a file of any size is validated in bounded memory. Validations run beside the scheduler's tick
(:mod:`.validation_pool`), so a large file holds up only its own job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from jinja2 import TemplateError
from sqlalchemy.orm import Session

from contract.bucket import adapter_prefix, file_key, spec_key
from contract.chat_format import InvalidChatFile, as_conversations, iter_numbered_examples
from contract.hyperparameters import Hyperparameters
from contract.lines import split_lines
from contract.spec import S3Location, TrainingSpec
from service.base_models.service import BaseModelUnavailable, tokenizer_dir
from service.context import AppContext
from service.db import JobRow
from service.ids import now
from service.jobs import hyperparameters
from service.jobs.capacity import ClusterView
from service.jobs.scheduler.rows import claim
from service.jobs.service import cluster_view, model_facts
from service.jobs.token_count import ChatTokenCounter, FileTokens
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
        tokens: dict[str, FileTokens] = {}
        for param in FILE_PARAMS:
            file_id = getattr(job, param)
            if file_id is None:
                continue
            try:
                tokens[param] = _count_file(ctx, job, file_key(file_id), stop)
            except InvalidChatFile as e:
                _fail(s, job, e, param)
                return
            except BaseModelUnavailable as e:
                _fail_unavailable(s, job, e)
                return
        training = tokens["training_file"]
        cluster = cluster_view(ctx, s)
        if cluster is None:  # the run's shape depends on the cluster: wait until Ray answers
            log.warning("Ray cannot be reached; job %s waits to be validated", job.id)
            return
        resolved = _resolve(ctx, job, training, cluster)
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


def _resolve(ctx: AppContext, job: JobRow, tokens: FileTokens,
             cluster: ClusterView) -> Hyperparameters:
    """The ``auto`` rule fed with the longest example, the model's shape and the cluster."""
    model = model_facts(ctx, job.base)
    return hyperparameters.resolve(
        job.method_hyperparameters, tokens.n_examples,
        hyperparameters.Limits.of(ctx.settings, job.base, model), job.method_type,
        longest_example=tokens.longest, model=model, cluster=cluster)


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


def _count_file(ctx: AppContext, job: JobRow, key: str,
                stop: threading.Event | None) -> FileTokens:
    """The tokens of every conversation the file trains on (two per DPO line), read as a
    stream: one line at a time is held, whatever the file's size.

    Each conversation is rendered with the base model's own template (the API holds only
    its tokenizer files); a line the template refuses (some refuse tool-call ids or several
    calls per turn) fails validation here, naming the line, rather than the run later. Errors
    are reported in the order of a check of the whole file before any count: a bad line
    anywhere, then too few examples, then the model or its template; so after the first
    counting error the rest of the file is still checked, just not counted.
    """
    tokens = FileTokens()
    counter: ChatTokenCounter | None = None
    deferred: InvalidChatFile | BaseModelUnavailable | None = None
    lines = split_lines(_until(stop, ctx.blobs.iter_chunks(key)), ctx.settings.max_line_bytes)
    for line, example in iter_numbered_examples(lines, job.method_type):
        if deferred is not None:
            continue
        try:
            counter = counter or ChatTokenCounter.for_model(
                tokenizer_dir(ctx.settings, ctx.blobs, job.base))
            for conversation in as_conversations(example, job.method_type):
                tokens.add(line, _count(counter, conversation, line, job.base))
        except (InvalidChatFile, BaseModelUnavailable) as e:
            deferred = e
    if deferred is not None:
        raise deferred
    return tokens


def _count(counter: ChatTokenCounter, conversation: dict[str, Any], line: int,
           base: str) -> int:
    try:
        return counter.count(conversation)
    except (ValueError, TypeError, TemplateError) as e:
        raise InvalidChatFile(line, f"cannot be rendered by the chat template of {base}: "
                              f"{e}") from None


def _until(stop: threading.Event | None, chunks: Iterator[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        if stop is not None and stop.is_set():
            raise Stopped
        yield chunk


def _token_summary(settings: Settings, tokens: FileTokens,
                   resolved: Hyperparameters) -> tuple[dict[str, Any], tuple[int, list[int]]]:
    """The summary event's data, and the lines that will be truncated (how many, the first
    100)."""
    limit = resolved.max_seq_length
    n_tokens = tokens.n_tokens(limit)
    trained = n_tokens * resolved.n_epochs
    summary = {
        "n_examples": tokens.n_examples, "n_tokens": n_tokens,
        "estimated_trained_tokens": trained,
        "estimated_duration_s": int(settings.training_startup_s
                                    + trained / settings.training_tokens_per_s),
        "max_seq_length": limit,
    }
    return summary, tokens.truncated(limit)


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
