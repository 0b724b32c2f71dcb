"""Validation beside the scheduler's tick: while one tenant's huge file validates, another
tenant's small job still goes from created to running; a shutdown does not wait for the huge
file, and the next process validates it again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from contract.bucket import file_key
from devstack.databases import database_for
from service.jobs.scheduler.validation_pool import ValidationPool
from service.main import build_context, create_app
from service.settings import Settings
from tests.service.conftest import KEY_A, KEY_B, api_settings, chat_jsonl, chat_line
from tests.service.fake_ray import FakeRay, MemoryBlobs
from tests.service.test_files_and_auth import upload

JOBS = "/v1/fine_tuning/jobs"
AS_A, AS_B = ({"Authorization": f"Bearer {key}"} for key in (KEY_A, KEY_B))


@dataclass
class EndlessFile(MemoryBlobs):
    """A bucket where one file (``endless``) streams a valid chat line every 20 ms until
    ``finish`` is set, as a very large file on a slow link would."""

    endless: str | None = None
    finish: threading.Event = field(default_factory=threading.Event)
    reading: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        if key != self.endless:
            yield from super().iter_chunks(key, chunk_size)
            return
        self.reading.set()
        try:
            i = 0
            while not self.finish.wait(0.02):
                i += 1
                yield (chat_line(i) + "\n").encode()
            yield from super().iter_chunks(key, chunk_size)
        finally:
            self.closed.set()


def until(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_for(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path, database_url: str) -> Settings:
    return api_settings(tmp_path, tiny_model_dir, database_url, scheduler_interval_s=0.05)


@pytest.fixture
def blobs() -> Iterator[EndlessFile]:
    """The endless file ends after 30 s at the latest: a scheduler that waits for it (in
    its tick, or at shutdown) then fails the test's timing instead of hanging the run."""
    blobs = EndlessFile()
    watchdog = threading.Timer(30, blobs.finish.set)
    watchdog.start()
    yield blobs
    blobs.finish.set()
    watchdog.cancel()


def service(settings: Settings, blobs: EndlessFile, ray: FakeRay) -> TestClient:
    """The API with its scheduler running, as ``make run`` runs it."""
    return TestClient(create_app(settings, context=partial(build_context, blobs=blobs,
                                                            ray=ray)))


def status(client: TestClient, headers: dict[str, str], job_id: str) -> str:
    return client.get(f"{JOBS}/{job_id}", headers=headers).json()["status"]


def create(client: TestClient, headers: dict[str, str], file_id: str) -> str:
    resp = client.post(JOBS, headers=headers,
                       json={"model": "tiny-llama", "training_file": file_id})
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]


def test_a_huge_file_holds_up_only_its_own_job(settings: Settings, blobs: EndlessFile):
    ray = FakeRay()
    with service(settings, blobs, ray) as client:
        huge = upload(client, AS_A, chat_jsonl()).json()["id"]
        blobs.endless = file_key(huge)
        slow = create(client, AS_A, huge)
        assert blobs.reading.wait(20), "the huge file's validation never started"

        small = create(client, AS_B, upload(client, AS_B).json()["id"])
        run = f"openft-{small}"
        assert until(lambda: run in ray.submitted, 15), status(client, AS_B, small)
        ray.report(run, "RUNNING")
        assert until(lambda: status(client, AS_B, small) == "running", 15)
        assert status(client, AS_A, slow) == "validating_files"

        blobs.finish.set()
        assert until(lambda: status(client, AS_A, slow) == "queued")


def test_shutdown_stops_a_validation_and_the_next_process_takes_it_up(
        settings: Settings, blobs: EndlessFile):
    with service(settings, blobs, FakeRay()) as client:
        huge = upload(client, AS_A, chat_jsonl()).json()["id"]
        blobs.endless = file_key(huge)
        job_id = create(client, AS_A, huge)
        assert blobs.reading.wait(20)
        started = time.monotonic()
    assert time.monotonic() - started < 10
    assert blobs.closed.wait(5), "the validation went on reading after shutdown"

    blobs.finish.set()
    with service(settings, blobs, FakeRay()) as client:
        assert status(client, AS_A, job_id) in ("validating_files", "queued")
        assert until(lambda: status(client, AS_A, job_id) == "queued")


class Validations:
    """A stand-in validate function: records calls; ``hold`` keeps them running."""

    def __init__(self, fail_first: bool = False):
        self.calls: list[str] = []
        self.running = 0
        self.most_running = 0
        self.hold = threading.Event()
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def __call__(self, job_id: str, stop: threading.Event) -> None:
        with self.lock:
            self.calls.append(job_id)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            first = len(self.calls) == 1
        try:
            while not self.hold.is_set() and not stop.is_set():
                time.sleep(0.01)
            if self.fail_first and first:
                raise RuntimeError("S3 went away")
        finally:
            with self.lock:
                self.running -= 1


def test_a_job_is_validated_once_at_a_time_within_the_threads():
    validations = Validations()
    pool = ValidationPool(validations, threads=2)
    try:
        pool.start(["a", "b", "c"])
        assert until(lambda: validations.running == 2, 5)
        pool.start(["a", "b", "c"])  # the next tick: all three still in flight
        assert pool.in_flight() == {"a", "b", "c"}
        validations.hold.set()
        assert until(lambda: not pool.in_flight(), 5)
        assert sorted(validations.calls) == ["a", "b", "c"]
        assert validations.most_running == 2
    finally:
        pool.close()


def test_a_validation_that_died_is_started_again_by_a_later_tick():
    validations = Validations(fail_first=True)
    validations.hold.set()
    pool = ValidationPool(validations, threads=1)
    try:
        pool.start(["a"])
        assert until(lambda: not pool.in_flight(), 5)
        pool.start(["a"])
        assert until(lambda: len(validations.calls) == 2 and not pool.in_flight(), 5)
    finally:
        pool.close()


def test_closing_stops_running_validations_and_drops_waiting_ones():
    validations = Validations()
    pool = ValidationPool(validations, threads=1)
    pool.start(["a", "b"])
    assert until(lambda: validations.running == 1, 5)
    pool.close()
    assert until(lambda: validations.running == 0, 5)
    pool.start(["c"])
    time.sleep(0.1)
    assert validations.calls == ["a"]
