"""What crosses from the service to a training run, and back: the job spec and progress events.

This module imports only pydantic: the API process reads and writes these shapes without
pulling in torch. The service writes ``jobs/{job_id}/spec.json``; the training driver reads
it and appends :class:`TrainingEvent` lines under ``jobs/{job_id}/events/``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class S3Location(BaseModel):
    """Where the run reads inputs and writes results. Credentials travel as AWS_* env vars."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str
    bucket: str
    region: str = "us-east-1"


class LoraSpec(BaseModel):
    """PEFT LoRA settings of the run."""

    model_config = ConfigDict(extra="forbid")

    r: int = 8
    """Rank of the low-rank update; serving must allow at least this rank."""
    alpha: int = 16
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt; ``all-linear`` adapts every linear layer but the LM head."""


class TrainingSpec(BaseModel):
    """Everything a training run needs; resolved by the service, never ``"auto"``."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    base_model_id: str
    base_model_path: str
    """Local Hugging Face directory of the base model on every Ray node."""
    training_file_key: str
    """S3 key of the validated chat JSONL training file."""
    validation_file_key: str | None = None
    model_key: str
    """The adapter goes to ``models/{model_key}/`` (adapter_config.json + safetensors)."""
    n_epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    """Examples per optimizer step, across all workers."""
    learning_rate: float = Field(gt=0)
    seed: int
    max_seq_length: int = 1024
    """Longer examples are truncated."""
    lora: LoraSpec = Field(default_factory=LoraSpec)
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    zero_stage: Literal[2, 3] = 2
    method: Literal["supervised", "dpo"] = "supervised"
    """``dpo`` trains on OpenAI's preference lines against the base with the adapter off."""
    dpo_beta: float = Field(default=0.1, gt=0)
    """Strength of DPO's pull towards the reference model (higher: stay closer)."""
    lr_scheduler: Literal["linear", "cosine"] = "linear"
    """Decay after warmup, to 0 at the end of the run."""
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    """Share of the optimizer steps with a linearly rising learning rate (at least one)."""
    packing: bool = True
    """Pack each step's examples into rows of ``max_seq_length`` tokens (attention and
    positions kept per example); the loss is the same as without, only faster."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory for long sequences, about 30% slower."""
    full_finetune: bool = False
    """Train every weight instead of a LoRA adapter; the result is a whole model."""
    init_adapter_key: str | None = None
    """Key prefix of a PEFT adapter (``models/<key>/``) to start from: continued training of
    a fine-tuned model or checkpoint. Its LoRA settings win over ``lora``."""
    eval_every_steps: int | None = Field(default=None, ge=1)
    """Validation loss every N optimizer steps when a validation file is given; ``None``:
    about ten times per run. A full pass over the validation file runs at the end."""
    s3: S3Location
    checkpoint_every_steps: int | None = Field(default=None, ge=1)
    """Besides one checkpoint at the end of every epoch, also one every N optimizer steps."""
    resume_from: str | None = None
    """Key prefix (in the bucket) of a checkpoint of an earlier run of this job, such as
    ``jobs/<id>/checkpoints/step-00000012/``: the run continues from that step with the same
    weights, optimizer and LR-schedule state and data order, and its metrics events continue
    numbering after it."""
    max_failures: int = Field(default=2, ge=0)
    """Worker-group failures (a worker process killed, a node lost) Ray Train recovers from by
    restarting the workers from the run's last checkpoint; one more fails the run."""

    @property
    def events_prefix(self) -> str:
        return events_prefix(self.job_id)

    @property
    def checkpoints_prefix(self) -> str:
        return f"jobs/{self.job_id}/checkpoints"

    @property
    def adapter_prefix(self) -> str:
        return adapter_prefix(self.model_key)


EventType = Literal["message", "metrics", "checkpoint", "paused", "result", "error"]


class TrainingEvent(BaseModel):
    """One progress line written by rank 0 of a run.

    ``type`` is ``message`` (human text), ``metrics`` (``data`` = step, train_loss, ...),
    ``checkpoint`` (``data`` = step, checkpoint_key: the resumable state, adapter_key: a
    servable adapter, model_key: its name under ``models/``, metrics: those of that step;
    everything is in S3 before the event), ``paused`` (``data`` = step, checkpoint_key: the
    run stopped after that checkpoint, as the control object asked), ``result`` (``data`` =
    trained_tokens, model_key: the adapter is fully in S3), or ``error`` (``data`` = code,
    param, message: the run failed for a reason the user can fix).
    """

    model_config = ConfigDict(extra="forbid")

    created_at: int
    level: Literal["info", "warn", "error"] = "info"
    type: EventType = "message"
    message: str
    data: dict[str, Any] | None = None


def spec_key(job_id: str) -> str:
    return f"jobs/{job_id}/spec.json"


def events_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/events/"


def event_batch_key(job_id: str, seq: int) -> str:
    """Event batches are numbered so readers can resume after the last one they ingested."""
    return f"{events_prefix(job_id)}{seq:08d}.jsonl"


def adapter_prefix(model_key: str) -> str:
    return f"models/{model_key}/"


DELETED_MARKER = "deleted.json"
"""Object the API writes next to an adapter's files when its model is deleted: serving then
stops serving it; the weights stay, as DESIGN.md asks."""


def deleted_marker_key(model_key: str) -> str:
    """
    >>> deleted_marker_key("tiny-llama-ftjob-1")
    'models/tiny-llama-ftjob-1/deleted.json'
    """
    return adapter_prefix(model_key) + DELETED_MARKER


def control_key(job_id: str) -> str:
    """The API writes ``{"action": "pause"}`` here; rank 0 checkpoints and stops the run."""
    return f"jobs/{job_id}/control.json"


def checkpoint_key(job_id: str, step: int) -> str:
    """Prefix of the resumable state after optimizer step ``step``.

    >>> checkpoint_key("ftjob-1", 12)
    'jobs/ftjob-1/checkpoints/step-00000012/'
    """
    return f"jobs/{job_id}/checkpoints/{checkpoint_dir_name(step)}/"


def checkpoint_dir_name(step: int) -> str:
    """The checkpoint's folder under ``jobs/{job_id}/checkpoints/``, as Ray Train names it."""
    return f"step-{step:08d}"


def checkpoint_model_key(model_key: str, step: int) -> str:
    """Name of the servable adapter of a checkpoint: ``models/{this}/``, served as
    ``<base>:{this}``.

    >>> checkpoint_model_key("tiny-llama-ftjob-1", 12)
    'tiny-llama-ftjob-1-step-00000012'
    """
    return f"{model_key}-{checkpoint_dir_name(step)}"
