"""A job's events as they are ingested, over Server-Sent Events (``GET .../events?stream=true``).

The stream polls the database: events reach it through the scheduler's ingest on whichever
API replica holds the job, so the database is the one place every replica sees them all.
Each poll is one short unit of work; no connection is held while the stream waits.

Wire format, one SSE message per event, oldest first, then a last ``end`` message once the
job has settled and everything was sent::

    id: ftevent-abc
    event: fine_tuning.job.event
    data: {"id":"ftevent-abc","object":"fine_tuning.job.event","created_at":1,...}

    event: end
    data: {"status":"succeeded"}
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.deps import Transactions
from service.jobs import service
from service.jobs.protocol import JobEvent
from service.lifecycle import TERMINAL

EVENT = "fine_tuning.job.event"
END = "end"
EVENT_STREAM = "text/event-stream"
BATCH = 500
"""Most events one poll reads; a stream that is behind reads again at once."""

Poll = Callable[[int, int], Awaitable[tuple[str | None, list[tuple[int, JobEvent]]]]]
"""``(after_seq, limit) -> (job status, up to limit [(seq, event), ...] oldest first)``: one
short DB read; the status is None once the job is gone."""


def wants_stream(stream: bool, accept: str | None) -> bool:
    """Whether a request asks for the live stream: ``?stream=true``, or an ``Accept``
    header naming ``text/event-stream`` (what a browser's ``EventSource`` sends).

    >>> wants_stream(False, "text/event-stream")
    True
    >>> wants_stream(False, "application/json, text/event-stream;q=0")
    False
    >>> wants_stream(False, "*/*")
    False
    """
    return stream or any(_accepts(part) for part in (accept or "").split(","))


def _accepts(media_range: str) -> bool:
    media_type, *params = (p.strip() for p in media_range.split(";"))
    if media_type.lower() != EVENT_STREAM:
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value) > 0
            except ValueError:
                return False
    return True


def event_message(event: JobEvent) -> ServerSentEvent:
    """One job event as an SSE message: ``data`` is the object the list returns, ``id``
    its id (what a client sends back as ``Last-Event-ID`` to resume after it).

    >>> message = event_message(JobEvent(id="ftevent-1", created_at=7, level="info",
    ...                                  message="Hi"))
    >>> message.encode().split(b"\\r\\n")[:2]
    [b'id: ftevent-1', b'event: fine_tuning.job.event']
    >>> json.loads(message.data)["message"], sorted(json.loads(message.data))
    ('Hi', ['created_at', 'data', 'id', 'level', 'message', 'object', 'type'])
    """
    # The JSON holds no raw newline (json escapes them), so it is one ``data:`` line.
    return ServerSentEvent(data=event.model_dump_json(), event=EVENT, id=event.id)


def end_message(status: str) -> ServerSentEvent:
    """The last message of a stream: the job settled and every event was sent.

    >>> end_message("succeeded").encode()
    b'event: end\\r\\ndata: {"status": "succeeded"}\\r\\n\\r\\n'
    """
    return ServerSentEvent(data=json.dumps({"status": status}), event=END)


async def follow(poll: Poll, after_seq: int, poll_s: float,
                 batch_size: int = BATCH) -> AsyncIterator[ServerSentEvent]:
    """Messages for every event after ``after_seq``, as they arrive, then :func:`end_message`
    once the job is settled and none is left. A client that goes away cancels the wait
    (sse-starlette watches for the disconnect), which ends the loop."""
    cursor = after_seq
    while True:
        status, batch = await poll(cursor, batch_size)
        for seq, event in batch:
            yield event_message(event)
            cursor = seq
        if len(batch) == batch_size:
            continue  # behind: read on without waiting
        if status is None:
            return
        if status in TERMINAL:
            yield end_message(status)
            return
        await anyio.sleep(poll_s)


def database_poll(db: Transactions, job_id: str) -> Poll:
    """Each poll of ``job_id``'s stream its own short transaction on the request pool."""

    async def poll(after_seq: int, limit: int) -> tuple[str | None, list[tuple[int, JobEvent]]]:
        return await db.run(lambda s: service.events_since(s, job_id, after_seq, limit))

    return poll


def response(poll: Poll, after_seq: int, poll_s: float, ping_s: float) -> EventSourceResponse:
    """The streaming answer; sse-starlette sends a keep-alive comment every ``ping_s``."""
    return EventSourceResponse(follow(poll, after_seq, poll_s), ping=ping_s)
