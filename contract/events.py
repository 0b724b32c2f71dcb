"""Progress events: written by the training run, ingested by the service.

Rank 0 and the driver append JSONL batches under ``jobs/{job_id}/events/``; each line is one
event of one of the kinds below (``type`` says which), the same shape on both sides::

    {"created_at": 1733400000, "level": "info", "type": "metrics",
     "message": "Step 3/12: training loss=1.2345", "data": {"step": 3, "total_steps": 12, ...}}

Each kind types its ``data``, so the service reads ``event.data.step`` rather than a string
key, and a writer that forgets a field fails where it writes, not where it is read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
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
    peak_memory_gib: float | None = None
    """Rank 0's peak memory in the step: CUDA memory on a GPU, the resident high-water mark
    on a CPU (``training.memory``)."""


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


class BaselineData(BaseModel):
    """The model's metrics on the whole validation file before step 1 (``full_valid_loss``,
    and the method's other ``full_valid_*`` metrics)."""

    model_config = ConfigDict(extra="allow")

    full_valid_loss: float


class BaselineEvent(_Event):
    """Validation of the model as training found it (the base model, or the adapter that
    continued training starts from): what every checkpoint's ``full_valid_loss`` is judged
    against. A fresh run writes it once, before step 1; a resumed run does not."""

    type: Literal["baseline"] = "baseline"
    data: BaselineData


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
    MessageEvent | MetricsEvent | BaselineEvent | CheckpointEvent | RestartEvent | PausedEvent
    | ResultEvent | ErrorEvent,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[TrainingEvent] = TypeAdapter(TrainingEvent)


def parse_event(line: str | bytes) -> TrainingEvent:
    """One JSONL line as its typed event; raises pydantic's ``ValidationError`` otherwise."""
    return _ADAPTER.validate_json(line)


LINE_KEYS = ("created_at", "level", "type", "message", "data")
"""The order of an event line's keys, as runs have always written them."""


def encode_event(event: TrainingEvent) -> bytes:
    """One compact JSON line (no newline), the same from every writer.

    An event without ``data`` has no ``data`` key. In ``data``, a field the writer set is
    there even when ``None`` (a full fine-tune's checkpoint says ``"adapter_key": null``:
    not servable); a field left at its default is left out (a metrics event names only the
    metrics of its method).

    >>> encode_event(MetricsEvent(created_at=1, message="Step 1", data=MetricsData(step=1)))
    b'{"created_at":1,"level":"info","type":"metrics","message":"Step 1","data":{"step":1}}'
    >>> encode_event(CheckpointEvent(created_at=1, message="c", data=CheckpointData(
    ...     step=2, checkpoint_key="k/", adapter_key=None))).split(b'"data":')[1]
    b'{"step":2,"checkpoint_key":"k/","adapter_key":null}}'
    >>> encode_event(MessageEvent(created_at=1, message="hi"))
    b'{"created_at":1,"level":"info","type":"message","message":"hi"}'
    """
    fields = json.loads(event.model_dump_json(exclude={"data"}, exclude_none=True))
    if event.data is not None:
        fields["data"] = json.loads(event.data.model_dump_json(exclude_unset=True))
    line = {key: fields[key] for key in LINE_KEYS if key in fields}
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode()


def encode_batch(events: Iterable[TrainingEvent]) -> bytes:
    """A batch object's body: one line per event, each ending in a newline."""
    return b"".join(encode_event(event) + b"\n" for event in events)
