"""Stage one: ``validating_files`` -> ``queued`` (the spec in the bucket) or ``failed``.

The files are read line by line, every conversation is rendered with the base model's own
chat template and counted, the ``auto`` hyperparameters are resolved from the count, and the
run's :class:`TrainingSpec` is written before the row says ``queued``.
"""

from __future__ import annotations

import logging
from typing import Any

from jinja2 import TemplateError
from sqlalchemy.orm import Session

from contract.bucket import adapter_prefix, file_key, spec_key
from contract.chat_format import InvalidChatFile, as_conversations, read_numbered_examples
from contract.hyperparameters import Hyperparameters
from contract.spec import S3Location, TrainingSpec
from service.base_models.service import BaseModelUnavailable, tokenizer_dir
from service.context import AppContext
from service.db import JobRow
from service.ids import now
from service.jobs import hyperparameters
from service.jobs.capacity import ClusterView
from service.jobs.scheduler.rows import claim
from service.jobs.service import cluster_view, model_facts
from service.jobs.token_count import ChatTokenCounter
from service.lifecycle import JobStatus, add_event, transition
from service.settings import Settings

FILE_PARAMS = ("training_file", "validation_file")
log = logging.getLogger("openft.scheduler")


def validate(ctx: AppContext, job_id: str) -> None:
    with ctx.db.session() as s:
        job = claim(s, job_id)
        if job is None or job.status != JobStatus.VALIDATING_FILES:
            return
        counts: dict[str, list[tuple[int, int]]] = {}
        for param in FILE_PARAMS:
            file_id = getattr(job, param)
            if file_id is None:
                continue
            try:
                numbered = read_numbered_examples(ctx.blobs.iter_lines(file_key(file_id)),
                                                  job.method_type)
                counts[param] = _count_tokens(ctx, job, numbered)
            except InvalidChatFile as e:
                _fail(s, job, e, param)
                return
            except BaseModelUnavailable as e:
                _fail_unavailable(s, job, e)
                return
        n_examples = len({line for line, _ in counts["training_file"]})
        cluster = cluster_view(ctx, s)
        if cluster is None:  # the run's shape depends on the cluster: wait until Ray answers
            log.warning("Ray cannot be reached; job %s waits to be validated", job.id)
            return
        resolved = _resolve(ctx, job, counts["training_file"], n_examples, cluster)
        spec = training_spec(ctx.settings, job, resolved, use_gpu=cluster.use_gpu)
        # The spec is in S3 before the row says queued (results before pointers).
        ctx.blobs.put(spec_key(job.id), spec.model_dump_json(indent=2).encode(),
                      "application/json")
        summary = _token_summary(ctx.settings, counts["training_file"], n_examples, resolved)
        method = {"type": job.method_type,
                  job.method_type: {"hyperparameters": resolved.method_dict()}}
        if transition(s, job.id, [JobStatus.VALIDATING_FILES], JobStatus.QUEUED,
                      "Files validated, moving job to queued state",
                      hyperparameters=resolved.openai_dict(), method=method):
            _announce_summary(s, job.id, summary, resolved)


def _resolve(ctx: AppContext, job: JobRow, counts: list[tuple[int, int]], n_examples: int,
             cluster: ClusterView) -> Hyperparameters:
    """The ``auto`` rule fed with the longest example, the model's shape and the cluster."""
    model = model_facts(ctx, job.base)
    return hyperparameters.resolve(
        job.method_hyperparameters, n_examples,
        hyperparameters.Limits.of(ctx.settings, job.base, model), job.method_type,
        longest_example=max((c for _, c in counts), default=None), model=model,
        cluster=cluster)


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


def _count_tokens(ctx: AppContext, job: JobRow,
                  examples: list[tuple[int, dict]]) -> list[tuple[int, int]]:
    """``(line, tokens)`` of every conversation the file trains on (two per DPO line),
    rendered with the base model's own template (the API holds only its tokenizer files).

    A line the template refuses (some refuse tool-call ids or several calls per turn)
    fails validation here, naming the line, rather than the run later.
    """
    counter = ChatTokenCounter.for_model(tokenizer_dir(ctx.settings, ctx.blobs, job.base))
    counts = []
    for line, example in examples:
        for conversation in as_conversations(example, job.method_type):
            try:
                counts.append((line, counter.count(conversation)))
            except (ValueError, TypeError, TemplateError) as e:
                raise InvalidChatFile(line, f"cannot be rendered by the chat template of "
                                      f"{job.base}: {e}") from None
    return counts


def _token_summary(settings: Settings, counts: list[tuple[int, int]], n_examples: int,
                   resolved: Hyperparameters) -> dict[str, Any]:
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


def _announce_summary(s: Session, job_id: str, summary: dict[str, Any],
                      resolved: Hyperparameters) -> None:
    truncated = summary.pop("truncated_lines")
    if truncated:
        shown = ", ".join(map(str, truncated[:10])) + (", ..." if len(truncated) > 10 else "")
        add_event(s, job_id, f"{len(truncated)} example(s) exceed {summary['max_seq_length']}"
                  f" tokens and will be truncated (lines {shown})", level="warn",
                  data={"truncated_lines": truncated[:100]})
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
