"""Reading a job's live events: Server-Sent Events parsed, resumed after a dropped connection.

The server (docs/api.md, live events) sends each event as ``event: fine_tuning.job.event`` with
its id and the event object as data, and a last ``event: end`` message, ``{"status": ...}``,
once the job settled and every event was sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from service.cli.client import CliError, StreamLost

JOB_EVENT = "fine_tuning.job.event"
END = "end"


@dataclass(frozen=True)
class SseMessage:
    event: str = "message"
    data: str = ""
    id: str | None = None


@dataclass(frozen=True)
class End:
    """The stream's last message: the job settled with ``status``."""

    status: str


def parse_sse(lines: Iterable[str]) -> Iterator[SseMessage]:
    """Messages of an SSE stream, as the WHATWG spec reads them: ``field: value`` lines, a blank
    line ends a message, ``:`` starts a comment (keep-alives), several ``data`` lines join with
    newlines, a message with no data is not dispatched.

    >>> list(parse_sse(["id: 7", "event: end", 'data: {"status": "succeeded"}', "",
    ...                 ": ping", ""]))
    [SseMessage(event='end', data='{"status": "succeeded"}', id='7')]
    """
    event, data, last_id = "", [], None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield SseMessage(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id" and "\0" not in value:
            last_id = value  # the spec keeps the last id across messages


OpenLines = Callable[[str | None], AbstractContextManager[Iterable[str]]]
"""Opens the stream resuming after an event id (None: from the first event); yields lines."""


def job_events(open_lines: OpenLines, job_id: str, *, after: str | None = None,
               reconnects: int = 5, sleep: Callable[[float], None] = time.sleep,
               ) -> Iterator[dict[str, Any] | End]:
    """Each event object of the job, oldest first, then :class:`End`.

    A dropped connection, a stream closed before ``end`` or a 5xx is retried from the last
    event received (``Last-Event-ID``), so no event is shown twice or missed; ``reconnects``
    failures in a row without an event in between give up with a CliError. The waits between
    tries grow 1, 2, 4, ... seconds, at most 10.
    """
    last_id, failures = after, 0
    while True:
        try:
            with open_lines(last_id) as lines:
                for message in parse_sse(lines):
                    failures = 0
                    if message.event == END:
                        yield End(json.loads(message.data).get("status", "unknown"))
                        return
                    if message.event == JOB_EVENT:
                        event = json.loads(message.data)
                        last_id = message.id or event.get("id") or last_id
                        yield event
            reason = "the server closed the stream before the job settled"
        except StreamLost as e:
            reason = e.message
        failures += 1
        if failures > reconnects:
            raise CliError(f"lost the live events of {job_id} after {reconnects} reconnects: "
                           f"{reason}")
        sleep(min(2.0 ** (failures - 1), 10.0))
