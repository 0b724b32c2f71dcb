"""Event batches: numbered after what is in S3, one complete object per write, rate-limited."""

from __future__ import annotations

import json

import pytest

from contract.events import MessageEvent, MetricsData, MetricsEvent, ResultData, ResultEvent
from training.events import EventWriter, next_seq


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ([], 0),
        (["jobs/j/events/00000000.jsonl"], 1),
        (["jobs/j/events/00000000.jsonl", "jobs/j/events/00000007.jsonl"], 8),
        (["jobs/other/events/00000005.jsonl"], 0),
        (["jobs/j/events/notes.txt", "jobs/j/events/x.jsonl"], 0),
    ],
)
def test_next_seq_continues_after_existing_batches(keys, expected):
    assert next_seq(keys, "j") == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def writer(first_seq: int = 0) -> tuple[EventWriter, dict[str, bytes], FakeClock]:
    store: dict[str, bytes] = {}
    clock = FakeClock()
    w = EventWriter(store.__setitem__, "j", first_seq, clock=clock, background=False)
    return w, store, clock


def note(text: str) -> MessageEvent:
    return MessageEvent(message=text)


def lines(blob: bytes) -> list[dict]:
    return [json.loads(line) for line in blob.decode().splitlines()]


def test_events_within_the_interval_share_one_batch():
    w, store, clock = writer(first_seq=3)

    w.emit(note("started"))  # first write goes out at once
    clock.now += 0.3
    w.emit(MetricsEvent(message="Step 1/2", data=MetricsData(step=1)))
    w.emit(MetricsEvent(message="Step 2/2", data=MetricsData(step=2)))
    clock.now += 1.0
    w.emit(ResultEvent(message="done", data=ResultData(trained_tokens=10, model_key="m")))
    w.close()

    assert sorted(store) == ["jobs/j/events/00000003.jsonl", "jobs/j/events/00000004.jsonl"]
    assert [e["message"] for e in lines(store["jobs/j/events/00000003.jsonl"])] == ["started"]
    second = lines(store["jobs/j/events/00000004.jsonl"])
    assert [(e["type"], e["data"]) for e in second] == [
        ("metrics", {"step": 1}),
        ("metrics", {"step": 2}),
        ("result", {"trained_tokens": 10, "model_key": "m"}),
    ]
    assert w.next_seq == 5


def test_close_writes_the_tail_and_nothing_when_empty():
    w, store, clock = writer()
    w.emit(note("a"))
    w.emit(note("b"))  # buffered: within the interval
    assert len(store) == 1

    w.close()
    w.close()

    assert [e["message"] for e in lines(store["jobs/j/events/00000001.jsonl"])] == ["b"]
    assert len(store) == 2


def test_a_failed_write_keeps_the_events_for_the_next_flush():
    calls: list[str] = []

    def flaky_put(key: str, body: bytes) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise ConnectionError("S3 is down")
        store[key] = body

    store: dict[str, bytes] = {}
    w = EventWriter(flaky_put, "j", 0, background=False)
    w.emit(note("kept"))  # the write fails; emit does not raise
    w.close()

    assert [e["message"] for e in lines(store["jobs/j/events/00000000.jsonl"])] == ["kept"]


def test_background_thread_flushes_a_lone_event():
    store: dict[str, bytes] = {}
    clock = FakeClock()
    with EventWriter(store.__setitem__, "j", 0, interval_s=0.05, clock=clock) as w:
        w.emit(note("first"))
        w.emit(note("second"))  # held back by the interval
        clock.now += 1.0
        import time

        deadline = time.monotonic() + 5
        while len(store) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(store) == 2
