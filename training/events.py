"""Progress events of a run, written as numbered JSONL objects the API ingests by sequence.

Each batch is one ``put_object`` of complete lines, so a reader never sees half a batch.
Batches are numbered after the ones already under the job's events prefix: the driver and
rank 0 write one after the other (never at the same time), each continuing the sequence.
Writes are rate-limited to about one per second; a background thread flushes a lone event
within that second even when the next one is a long training step away.

Each event is one of :mod:`contract.events`' typed kinds, built by its emitter (a
``MetricsEvent`` from the loop, a ``CheckpointEvent`` from the checkpointer, ...), so a
missing field fails where the event is written, not where the service reads it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from contract.bucket import event_batch_key, event_batch_seq, events_prefix
from contract.events import TrainingEvent, encode_batch
from training.storage import list_keys

Put = Callable[[str, bytes], None]
"""Store one object: ``put(key, body)``."""


def next_seq(existing_keys: Iterable[str], job_id: str) -> int:
    """The first batch number after those already written for ``job_id``.

    >>> next_seq(["jobs/j/events/00000000.jsonl", "jobs/j/events/00000001.jsonl"], "j")
    2
    """
    numbers = [seq for key in existing_keys if (seq := event_batch_seq(key, job_id)) is not None]
    return max(numbers, default=-1) + 1


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

    def emit(self, event: TrainingEvent) -> None:
        """Queue one event; a failed write here is retried later and raised by :meth:`close`."""
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
    first = next_seq(list_keys(s3, bucket, events_prefix(job_id)), job_id)

    def put(key: str, body: bytes) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/x-ndjson")

    return EventWriter(put, job_id, first, **kwargs)
