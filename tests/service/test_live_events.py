"""Live job events over Server-Sent Events (``GET .../events?stream=true``).

The API runs under uvicorn on a loopback port (a streamed answer reaches the client as it is
sent, as in production), on SQLite and on PostgreSQL; Ray is a fake and the bucket a dict, and
the run's side is played by event batches the scheduler ingests, as in
``test_job_transitions``. The stream is read the way an SSE client reads it: messages split
on blank lines, comment lines (keep-alive pings) skipped.
"""

from __future__ import annotations

import doctest
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest
from sqlalchemy import event as sa_event

from contract.events import MetricsData, MetricsEvent, ResultData, ResultEvent
from service.jobs import live_events
from service.jobs.protocol import JobEvent
from service.jobs.scheduler import Scheduler
from service.main import build_context, create_app
from tests.service.conftest import KEY_A, KEY_B, api_settings
from tests.service.fake_ray import FakeRay, MemoryBlobs
from tests.service.test_files_and_auth import assert_envelope
from tests.service.test_job_transitions import Jobs, metrics
from tests.support.asgi_server import served

JOBS = "/v1/fine_tuning/jobs"
POLL_S, PING_S = 0.05, 0.2
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
SSE = {"Accept": "text/event-stream"}


# -- reading a stream as an SSE client does ----------------------------------------------
@dataclass
class Message:
    event: str
    data: dict
    id: str | None


class Reader:
    """SSE messages of a streamed answer, in order. Pings keep lines coming, so a stream
    that never sends what is awaited fails at ``deadline_s``, not at the read timeout."""

    def __init__(self, resp: httpx.Response, deadline_s: float = 30):
        self._lines = resp.iter_lines()
        self._deadline = time.monotonic() + deadline_s

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        fields: dict[str, list[str]] = {}
        for line in self._lines:
            assert time.monotonic() < self._deadline, f"still waiting; have {fields}"
            if line.startswith(":"):
                continue  # a comment: the keep-alive ping
            if line:
                name, _, value = line.partition(":")
                fields.setdefault(name, []).append(value.removeprefix(" "))
            elif "data" in fields:
                return Message(fields.get("event", ["message"])[-1],
                               json.loads("\n".join(fields["data"])),
                               fields.get("id", [None])[-1])
        raise StopIteration

    def take(self, n: int) -> list[Message]:
        return [next(self) for _ in range(n)]

    def until_end(self) -> list[Message]:
        """Every message up to and including ``end``; the server must then close."""
        seen = []
        for message in self:
            seen.append(message)
            if message.event == "end":
                assert list(self) == [], "messages after end"
                return seen
        raise AssertionError(f"the stream closed without an end message after {seen}")


# -- the API under uvicorn ---------------------------------------------------------------
@pytest.fixture
def ray() -> FakeRay:
    return FakeRay()


@pytest.fixture
def blobs() -> MemoryBlobs:
    return MemoryBlobs()


@pytest.fixture
def app(tmp_path: Path, tiny_model_dir: Path, database_url: str, ray, blobs):
    settings = api_settings(tmp_path, tiny_model_dir, database_url,
                            events_poll_s=POLL_S, events_ping_s=PING_S)
    return create_app(settings, run_scheduler=False,
                      context=partial(build_context, blobs=blobs, ray=ray))


@pytest.fixture
def http(app) -> Iterator[httpx.Client]:
    with served(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client


@pytest.fixture
def jobs(http, app, ray, blobs) -> Jobs:
    return Jobs(http, A, Scheduler(app.state.ctx), ray, blobs)  # type: ignore[arg-type]


def listed(http: httpx.Client, job_id: str, headers: dict[str, str] = A) -> list[dict]:
    """The job's events as the list returns them: newest first."""
    resp = http.get(f"{JOBS}/{job_id}/events", params={"limit": 1000}, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def streamed(http: httpx.Client, job_id: str, headers: dict[str, str] | None = None,
             **params: str) -> list[Message]:
    """The whole stream of a settled job, ``end`` included."""
    with http.stream("GET", f"{JOBS}/{job_id}/events", params={"stream": "true", **params},
                     headers={**A, **(headers or {})}) as resp:
        assert resp.status_code == 200, resp.read()
        return Reader(resp).until_end()


def settle(jobs: Jobs, job_id: str) -> None:
    model_key = jobs.spec(job_id).model_key
    jobs.write(job_id, metrics(2), ResultEvent(
        message="done", data=ResultData(trained_tokens=10, model_key=model_key)))
    jobs.ray.report(jobs.run_of(job_id), "SUCCEEDED")
    jobs.scheduler.tick()


def cancelled_with_same_second_events(jobs: Jobs) -> str:
    """A settled job whose events include three of one second."""
    job_id = jobs.running()
    jobs.write(job_id, *(MetricsEvent(created_at=1_800_000_000, message=f"Step {i}/9",
                                      data=MetricsData(step=i, total_steps=9, train_loss=1.0))
                         for i in (1, 2, 3)))
    jobs.scheduler.tick()
    assert jobs.post(job_id, "cancel").json()["status"] == "cancelled"
    return job_id


# -- the stream --------------------------------------------------------------------------
def test_stream_sends_every_event_oldest_first_then_new_ones_and_ends_when_settled(jobs, http):
    job_id = jobs.running()
    before = listed(http, job_id)
    with http.stream("GET", f"{JOBS}/{job_id}/events?stream=true", headers=A) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        reader = Reader(resp)
        first = reader.take(len(before))
        assert [m.data for m in first] == before[::-1]  # the list's objects, oldest first
        assert {m.event for m in first} == {"fine_tuning.job.event"}
        assert [m.id for m in first] == [m.data["id"] for m in first]

        # ingested while the stream is open: it arrives
        jobs.write(job_id, metrics(1, total=2, loss=2.5))
        jobs.scheduler.tick()
        [step] = reader.take(1)
        assert step.data["type"] == "metrics"
        assert step.data["data"] == {"step": 1, "total_steps": 2, "train_loss": 2.5}

        settle(jobs, job_id)
        rest = reader.until_end()
    assert rest[-1] == Message("end", {"status": "succeeded"}, None)
    sent = [m.data for m in first + [step] + rest[:-1]]
    assert sent == listed(http, job_id)[::-1]  # every event, in the list's order, once
    assert "The job has successfully completed" in [e["message"] for e in sent]


def test_accept_event_stream_works_like_stream_true(jobs, http):
    job_id = cancelled_with_same_second_events(jobs)
    with http.stream("GET", f"{JOBS}/{job_id}/events", headers={**A, **SSE}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        by_header = Reader(resp).until_end()
    assert by_header == streamed(http, job_id)
    assert [m.data for m in by_header[:-1]] == listed(http, job_id)[::-1]
    assert by_header[-1].data == {"status": "cancelled"}


def test_resume_with_last_event_id_or_after_sends_only_later_events(jobs, http):
    job_id = cancelled_with_same_second_events(jobs)
    events = listed(http, job_id)[::-1]
    assert [e["created_at"] for e in events].count(1_800_000_000) == 3
    for k, anchor in enumerate(events):
        later = [*events[k + 1:], {"status": "cancelled"}]
        assert [m.data for m in streamed(http, job_id, {"Last-Event-ID": anchor["id"]})] == later
        assert [m.data for m in streamed(http, job_id, after=anchor["id"])] == later
    # a reconnecting EventSource sends Last-Event-ID with the URL it first opened: it wins
    resumed = streamed(http, job_id, {"Last-Event-ID": events[-2]["id"]}, after=events[0]["id"])
    assert [m.data for m in resumed] == [events[-1], {"status": "cancelled"}]


def test_a_bad_resume_point_is_refused_before_any_stream(jobs, http):
    job_id = cancelled_with_same_second_events(jobs)
    other_job = jobs.create()
    other_event = listed(http, other_job)[0]["id"]
    for bad in (other_event, "ftevent-nope"):
        resp = http.get(f"{JOBS}/{job_id}/events?stream=true",
                        headers={**A, "Last-Event-ID": bad})
        assert_envelope(resp, 400, param="Last-Event-ID", code="invalid_value")
    # ?after= is the list's cursor and is refused as the list refuses it
    resp = http.get(f"{JOBS}/{job_id}/events", params={"stream": "true", "after": other_event},
                    headers=A)
    assert_envelope(resp, 404, param="after")


def test_another_organizations_job_and_a_missing_one_are_404_before_any_stream(jobs, http):
    job_id = jobs.create()
    for ask in ({"params": {"stream": "true"}, "headers": B},
                {"headers": {**B, **SSE}}):
        resp = http.get(f"{JOBS}/{job_id}/events", **ask)  # type: ignore[arg-type]
        assert resp.headers["content-type"] == "application/json"
        assert_envelope(resp, 404, param="fine_tuning_job_id")
    missing = http.get(f"{JOBS}/ftjob-missing/events?stream=true", headers=A)
    assert_envelope(missing, 404, param="fine_tuning_job_id")


def test_without_stream_the_endpoint_is_the_paginated_list(jobs, http):
    job_id = cancelled_with_same_second_events(jobs)
    plain = http.get(f"{JOBS}/{job_id}/events", params={"limit": 2}, headers=A).json()
    assert plain["object"] == "list" and plain["has_more"] is True and len(plain["data"]) == 2
    for headers, params in (({"Accept": "application/json"}, {}), ({}, {"stream": "false"}),
                            ({"Accept": "text/event-stream;q=0, */*"}, {})):
        resp = http.get(f"{JOBS}/{job_id}/events", params={"limit": 2, **params},
                        headers={**A, **headers})
        assert resp.headers["content-type"] == "application/json"
        assert resp.json() == plain
    older = http.get(f"{JOBS}/{job_id}/events",
                     params={"limit": 2, "after": plain["last_id"]}, headers=A).json()
    assert older["data"] == listed(http, job_id)[2:4]


def test_an_idle_stream_sends_keep_alive_pings(jobs, http):
    job_id = jobs.running()
    n = len(listed(http, job_id))
    with http.stream("GET", f"{JOBS}/{job_id}/events", headers={**A, **SSE}) as resp:
        lines = resp.iter_lines()
        seen = 0
        for line in lines:  # the client's read timeout fails the test if no ping comes
            seen += line.startswith("data:")
            if line.startswith(":") and seen >= n:
                break
    assert seen == n  # and nothing was sent twice meanwhile


def test_a_client_that_goes_away_ends_its_stream(jobs, http, app):
    job_id = jobs.running()
    reads: list[float] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        if "FROM job_events" in statement and job_id in str(parameters):
            reads.append(time.monotonic())

    sa_event.listen(app.state.ctx.db.engine, "before_cursor_execute", count)
    with http.stream("GET", f"{JOBS}/{job_id}/events?stream=true", headers=A) as resp:
        lines = resp.iter_lines()
        while len(reads) < 5:  # polling while the client listens (pings keep lines coming)
            next(lines)
    # The server sees the disconnect and stops polling: the reads stop growing.
    deadline, quiet = time.monotonic() + 10, 20 * POLL_S
    while reads and time.monotonic() - reads[-1] < quiet:
        assert time.monotonic() < deadline, "the stream kept polling after the client left"
        time.sleep(POLL_S)


# -- the pieces, without a server --------------------------------------------------------
def test_doctests():
    assert doctest.testmod(live_events).failed == 0


@pytest.mark.parametrize("stream, accept, wanted", [
    (True, None, True),
    (False, None, False),
    (False, "text/event-stream", True),
    (False, "Text/Event-Stream; charset=utf-8", True),
    (False, "application/json, text/event-stream;q=0.5", True),
    (False, "text/event-stream;q=0", False),
    (False, "text/event-stream;q=x", False),
    (False, "*/*", False),
    (False, "application/json", False),
])
def test_which_requests_ask_for_the_stream(stream, accept, wanted):
    assert live_events.wants_stream(stream, accept) is wanted


def event(n: int) -> JobEvent:
    return JobEvent(id=f"ftevent-{n}", created_at=1, level="info", message=f"e{n}")


def test_follow_reads_on_while_behind_and_ends_only_when_settled_and_drained():
    """A fake database: 5 events, the job settles after the third poll."""
    polls: list[int] = []

    async def poll(after: int, limit: int):
        polls.append(after)
        status = "succeeded" if len(polls) >= 3 else "running"
        return status, [(n, event(n)) for n in range(after + 1, 6)][:limit]

    async def run() -> list[str]:
        return [f"{m.event}:{m.id}" async for m in live_events.follow(poll, 0, 0, batch_size=2)]

    sent = anyio.run(run)
    assert sent == [f"fine_tuning.job.event:ftevent-{n}" for n in range(1, 6)] + ["end:None"]
    assert polls == [0, 2, 4]  # full batches read on at once; the last one was short
