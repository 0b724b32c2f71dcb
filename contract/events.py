"""Progress events: written by the training run, ingested by the service.

Rank 0 and the driver append JSONL batches under ``jobs/{job_id}/events/``; each line is one
event of one of the kinds below (``type`` says which), the same shape on both sides::

    {"created_at": 1733400000, "level": "info", "type": "metrics",
     "message": "Step 3/12: training loss=1.2345", "data": {"step": 3, "total_steps": 12, ...}}

Each kind types its ``data``, so the service reads ``event.data.step`` rather than a string
key, and a writer that forgets a field fails where it writes, not where it is read.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Level = Literal["info", "warn", "error"]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    created_at: int = Field(default_factory=lambda: int(time.time()))
    level: Level = "info"
    message: str


class MessageEvent(_Event):
    """Human text for the job's event list."""

    type: Literal["message"] = "message"
    data: None = None


class MetricsData(BaseModel):
    """One optimizer step's numbers. ``step`` is always there; the rest depend on the method
    (``train_loss``, ``train_mean_token_accuracy``, DPO's ``train_reward_margin``, ...) and
    on a validation file (``valid_loss``, ``full_valid_loss``, ...)."""

    model_config = ConfigDict(extra="allow")

    step: int
    total_steps: int | None = None
    train_loss: float | None = None


class MetricsEvent(_Event):
    type: Literal["metrics"] = "metrics"
    data: MetricsData


class CheckpointData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int
    checkpoint_key: str
    """Key prefix of the resumable state (:func:`contract.bucket.checkpoint_key`)."""
    adapter_key: str | None = None
    """Key prefix of the servable adapter; None for a full fine-tune (not servable)."""
    model_key: str | None = None
    """The adapter's name under ``models/``; None when not servable."""
    metrics: dict[str, Any] | None = None
    """That step's metrics."""


class CheckpointEvent(_Event):
    """A checkpoint is complete in S3 and Ray Train holds it: a restart continues after it."""

    type: Literal["checkpoint"] = "checkpoint"
    data: CheckpointData


class RestartData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int
    """The checkpoint's step the restarted workers continue after."""


class RestartEvent(_Event):
    """Ray Train replaced failed workers; the run goes on from the step named."""

    type: Literal["restart"] = "restart"
    data: RestartData


class PausedData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int
    checkpoint_key: str


class PausedEvent(_Event):
    """The run stopped after that checkpoint, as the control object asked."""

    type: Literal["paused"] = "paused"
    data: PausedData


class ResultData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trained_tokens: int
    model_key: str
    """The model is complete under ``models/{model_key}/``."""


class ResultEvent(_Event):
    type: Literal["result"] = "result"
    data: ResultData


class ErrorData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str
    param: str | None = None


class ErrorEvent(_Event):
    """The run failed for a reason the user can fix (``code`` other than ``server_error``),
    or for one of ours."""

    type: Literal["error"] = "error"
    level: Level = "error"
    data: ErrorData


TrainingEvent = Annotated[
    MessageEvent | MetricsEvent | CheckpointEvent | RestartEvent | PausedEvent | ResultEvent
    | ErrorEvent,
    Field(discriminator="type"),
]
EventType = Literal["message", "metrics", "checkpoint", "restart", "paused", "result", "error"]

_ADAPTER: TypeAdapter[TrainingEvent] = TypeAdapter(TrainingEvent)


def parse_event(line: str | bytes) -> TrainingEvent:
    """One JSONL line as its typed event; raises pydantic's ``ValidationError`` otherwise."""
    return _ADAPTER.validate_json(line)


def make_event(message: str, type: EventType = "message", data: Any = None,
               level: Level | None = None) -> TrainingEvent:
    """The typed event of ``type``, its ``data`` checked against that kind's model.

    >>> make_event("Step 1/2", type="metrics", data={"step": 1}).data.step
    1
    """
    fields: dict[str, Any] = {"type": type, "message": message, "data": data}
    if level is not None:
        fields["level"] = level
    return _ADAPTER.validate_python(fields)


def encode_event(event: TrainingEvent) -> str:
    """One JSONL line (no newline)."""
    return event.model_dump_json(exclude_none=True)
