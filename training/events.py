"""Progress events of a run, written as numbered JSONL objects the API ingests by sequence.

Each batch is one ``put_object`` of complete lines, so a reader never sees half a batch.
Batches are numbered after the ones already under the job's events prefix: the driver and
rank 0 write one after the other (never at the same time), each continuing the sequence.
Writes are rate-limited to about one per second; a background thread flushes a lone event
within that second even when the next one is a long training step away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from contract.bucket import event_batch_key, events_prefix
from contract.events import EventType, TrainingEvent

Put = Callable[[str, bytes], None]
"""Store one object: ``put(key, body)``."""


def next_seq(existing_keys: Iterable[str], job_id: str) -> int:
    """The first batch number after those already written for ``job_id``.

    >>> next_seq(["jobs/j/events/00000000.jsonl", "jobs/j/events/00000001.jsonl"], "j")
    2
    """
    prefix = events_prefix(job_id)
    numbers = [
        int(key[len(prefix) : -len(".jsonl")])
        for key in existing_keys
        if key.startswith(prefix)
        and key.endswith(".jsonl")
        and key[len(prefix) : -len(".jsonl")].isdigit()
    ]
    return max(numbers, default=-1) + 1


def encode_batch(events: Iterable[TrainingEvent]) -> bytes:
    return "".join(event.model_dump_json(exclude_none=True) + "\n" for event in events).encode()


class EventWriter:
    """Buffers events and writes them as batch objects ``seq``, ``seq + 1``, ...

    Use as a context manager (or call :meth:`close`): the last batch is written on exit.
    """

    def __init__(
        self,
        put: Put,
        job_id: str,
        first_seq: int,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        self._put = put
        self._job_id = job_id
        self._seq = first_seq
        self._interval = interval_s
        self._clock = clock
        self._buffer: list[TrainingEvent] = []
        self._last_flush = float("-inf")
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._tick, name="event-flusher", daemon=True)
            self._thread.start()

    @property
    def next_seq(self) -> int:
        return self._seq

    def emit(
        self,
        message: str,
        type: EventType = "message",
        data: dict[str, Any] | None = None,
        level: Literal["info", "warn", "error"] = "info",
    ) -> None:
        """Queue one event; a failed write here is retried later and raised by :meth:`close`."""
        event = TrainingEvent(
            created_at=int(time.time()), level=level, type=type, message=message, data=data
        )
        with self._lock:
            self._buffer.append(event)
        self._flush_quietly()

    def flush(self, force: bool = True) -> None:
        """Write buffered events as one batch; unless ``force``, only if the interval passed."""
        with self._lock:
            if not self._buffer:
                return
            if not force and self._clock() - self._last_flush < self._interval:
                return
            self._put(event_batch_key(self._job_id, self._seq), encode_batch(self._buffer))
            self._seq += 1
            self._buffer = []
            self._last_flush = self._clock()

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        self.flush(force=True)

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _tick(self) -> None:
        while not self._closed.wait(self._interval / 4):
            self._flush_quietly()

    def _flush_quietly(self) -> None:
        try:
            self.flush(force=False)
        except Exception:  # noqa: BLE001 - events stay buffered; the next flush retries
            pass


def s3_event_writer(s3: Any, bucket: str, job_id: str, **kwargs: Any) -> EventWriter:
    """A writer that continues the job's sequence in S3."""
    from training.storage import list_keys

    first = next_seq(list_keys(s3, bucket, events_prefix(job_id)), job_id)

    def put(key: str, body: bytes) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/x-ndjson")

    return EventWriter(put, job_id, first, **kwargs)
