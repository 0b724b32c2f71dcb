"""kill -9 of the API process in the middle of traffic: 20 job creates and uploads (some of
them mid-body) in flight, jobs validating, queued and running on Ray.

What a client may rely on afterwards, checked on the real parts (uvicorn process, SQLite in
the data dir, SeaweedFS, the session's Ray head):

- nothing acknowledged is lost: every upload answered 200 is listed after the restart with
  the very bytes sent (and, sent with an ``Idempotency-Key`` and retried until answered,
  listed once); every job create answered with an id is listed, once;
- nothing is launched twice: each job has at most one Ray submission, ``openft-<job id>``,
  with no ``-r<n>`` of a second run;
- every job settles and says why: ``succeeded`` with its model, ``cancelled`` (the test
  cancels the jobs the kill did not catch on Ray; their Ray runs stop), or ``failed`` with an
  error code and message;
- every error a client saw was a transport error while no API process was up, or an
  enveloped JSON error with a code: never a plain-text 500.

The kill's narrowest window, Ray holding a run the database never recorded (the process died
between the two, or a cancel landed meanwhile), is a few milliseconds wide on the real parts:
the last tests open it on purpose, in process, against a fake Ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from devstack.databases import database_for
from devstack.processes import ManagedProcess, served_by, start, wait_until
from service.jobs.scheduler import Scheduler
from service.main import build_context, create_app
from service.settings import Settings
from tests.service.conftest import chat_jsonl
from tests.service.fake_ray import FakeRay, MemoryBlobs
from tests.support.api_process import KEY, api_env_for, wait_for
from tests.support.jobs import TERMINAL

JOBS = 20
CREATORS = 4
UPLOADERS = 2
LARGE_UPLOAD = 2 * 1024 * 1024
TRICKLE_CHUNK, TRICKLE_PAUSE_S = 32 * 1024, 0.03
"""A large upload's body goes out in these pieces, so it takes seconds: the kill lands
mid-body."""
ALLOWED_TRANSPORT = (httpx.ConnectError, httpx.ReadError, httpx.WriteError,
                     httpx.RemoteProtocolError)
"""What a client sees of a dead server: refused, reset, or closed without an answer. A
timeout would be a hang, not a kill."""
RAY_LIVE = ("PENDING", "RUNNING")


@dataclass
class Seen:
    """One error a client saw: what it was doing, when it started, and the error."""

    what: str
    started: float
    error: BaseException | None = None
    response: httpx.Response | None = None


@dataclass
class Ledger:
    """What the clients were told, kept by their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    files: dict[str, bytes] = field(default_factory=dict)
    """Acknowledged uploads: file id -> the bytes sent."""
    jobs: list[str] = field(default_factory=list)
    """Acknowledged job creates, in the order answered."""
    unknown_creates: int = 0
    """Creates cut off after their request may have reached the API: maybe a job, no id."""
    errors: list[Seen] = field(default_factory=list)
    mid_body: int = 0
    creating: int = 0

    def add(self, name: str, delta: int) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + delta)


class Traffic:
    """Upload and job-create threads against the API at ``url``, across its kill and restart.

    Uploads alternate a large, trickled body and a small one, each with an
    ``Idempotency-Key``, retried on transport errors until answered; they go on until the
    restart, then each thread does two more. Each creator makes its share of :data:`JOBS`,
    paced, retrying until it has it.
    """

    def __init__(self, url: str, training_file: str, deadline: float):
        self.url, self.training_file, self.deadline = url, training_file, deadline
        self.ledger = Ledger()
        self.restarted = threading.Event()
        self.stop = threading.Event()
        self.crashed: list[BaseException] = []
        self.threads = [self._thread(self._uploads, i) for i in range(UPLOADERS)]
        self.threads += [self._thread(self._creates, JOBS // CREATORS) for _ in range(CREATORS)]

    def _thread(self, work: Callable[[int], None], arg: int) -> threading.Thread:
        def run() -> None:
            try:
                work(arg)
            except BaseException as e:  # a bug in the test, not an error a client saw
                self.crashed.append(e)
                raise

        return threading.Thread(target=run, daemon=True)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))
        assert not self.crashed, self.crashed
        assert not any(t.is_alive() for t in self.threads), "client threads did not finish"

    def _client(self) -> httpx.Client:
        # No keep-alive: each request opens its own connection, so what it sees is its own.
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"},
                            timeout=120, limits=httpx.Limits(max_keepalive_connections=0))

    def _send(self, what: str,
              send: Callable[[], httpx.Response]) -> httpx.Response | httpx.HTTPError:
        """The response, or the transport error; every error is recorded."""
        started = time.monotonic()
        try:
            r = send()
        except httpx.HTTPError as e:
            self.ledger.errors.append(Seen(what, started, error=e))
            return e
        if r.status_code >= 400:
            self.ledger.errors.append(Seen(what, started, response=r))
        return r

    def _running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def _uploads(self, thread: int) -> None:
        n, after_restart = 0, 0
        with self._client() as http:
            while self._running() and after_restart < 2:
                after_restart += self.restarted.is_set()
                large = n % 2 == 0
                body = upload_body(f"{thread}-{n}", LARGE_UPLOAD if large else 20_000)
                self._upload_until_answered(http, f"upload {thread}-{n}", body, large)
                n += 1

    def _upload_until_answered(self, http: httpx.Client, key: str, body: bytes,
                               trickled: bool) -> None:
        while self._running():
            r = self._send(key, lambda: http.post(
                "/v1/files", content=self._multipart(body, trickled),
                headers={"Idempotency-Key": key, **multipart_headers(body)}))
            if isinstance(r, httpx.Response) and r.status_code == 200:
                with self.ledger.lock:
                    self.ledger.files[r.json()["id"]] = body
                return
            time.sleep(0.3)

    def _multipart(self, body: bytes, trickled: bool) -> Iterator[bytes]:
        yield multipart_head()
        self.ledger.add("mid_body", 1)
        try:
            step = TRICKLE_CHUNK if trickled else len(body)
            for i in range(0, len(body), step):
                yield body[i:i + step]
                if trickled:
                    time.sleep(TRICKLE_PAUSE_S)
        finally:
            self.ledger.add("mid_body", -1)
        yield multipart_tail()

    def _creates(self, share: int) -> None:
        made = 0
        with self._client() as http:
            while self._running() and made < share:
                self.ledger.add("creating", 1)
                try:
                    r = self._send("create job", lambda: http.post(
                        "/v1/fine_tuning/jobs",
                        json={"model": "tiny-llama", "training_file": self.training_file,
                              "hyperparameters": {"n_epochs": 1}}))
                finally:
                    self.ledger.add("creating", -1)
                if isinstance(r, httpx.Response) and r.status_code == 200:
                    with self.ledger.lock:
                        self.ledger.jobs.append(r.json()["id"])
                    made += 1
                elif not isinstance(r, httpx.Response | httpx.ConnectError):
                    self.ledger.add("unknown_creates", 1)  # a refused one made nothing
                time.sleep(1.5 if isinstance(r, httpx.Response) else 0.3)


BOUNDARY = "openft-kill-test-boundary"


def upload_body(tag: str, size: int) -> bytes:
    """JSONL-looking bytes of about ``size``, different for every ``tag``."""
    line = chat_jsonl(1)
    seed = hashlib.sha256(tag.encode()).hexdigest().encode()
    out = bytearray()
    while len(out) < size:
        out += seed + b" " + line
        seed = hashlib.sha256(seed).hexdigest().encode()
    return bytes(out)


def multipart_head() -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
            f"fine-tune\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"t.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n").encode()


def multipart_tail() -> bytes:
    return f"\r\n--{BOUNDARY}--\r\n".encode()


def multipart_headers(body: bytes) -> dict[str, str]:
    length = len(multipart_head()) + len(body) + len(multipart_tail())
    return {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "Content-Length": str(length)}


@contextmanager
def api_server(env: dict[str, str], log_dir: Path) -> Iterator[ManagedProcess]:
    """An API process (uvicorn, as in production); stopped by its PID on the way out, if the
    test has not killed it first."""
    port = env["OPENFT_PORT"]
    proc = start("api", [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app",
                         "--host", "127.0.0.1", "--port", port], log_dir, env)
    try:
        wait_until(lambda: served_by(f"http://127.0.0.1:{port}/healthz", proc.pid), "API",
                   proc, 120)
        yield proc
    finally:
        proc.stop()


def kill_9(proc: ManagedProcess) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.popen.wait(timeout=30)


def ray_submissions(ray_head) -> list[dict]:
    """Every run Ray's Jobs API knows (the session's head: other tests' runs too)."""
    runs: list[dict] = httpx.get(f"{ray_head.dashboard_url}/api/jobs/", timeout=30).json()
    return runs


def runs_by_job(runs: list[dict], job_ids: set[str]) -> dict[str, list[dict]]:
    """The runs of these jobs, by job id: the one the launch's metadata names, or any job
    id the submission id contains."""
    out: dict[str, list[dict]] = {}
    for run in runs:
        sid = run.get("submission_id") or ""
        owner = (run.get("metadata") or {}).get("openft_job_id") or next(
            (j for j in job_ids if j in sid), None)
        if owner in job_ids:
            out.setdefault(owner, []).append(run)
    return out


def kill_mid_traffic(api: ManagedProcess, ledger: Ledger, ray_head) -> dict[str, int]:
    """SIGKILL the API once a job is on Ray (or after 45 s of trying) and, at that, the
    moment a large upload is mid-body and a create is in flight; what was in flight."""
    def on_ray() -> bool:
        with ledger.lock:
            acked = set(ledger.jobs)
        return bool(runs_by_job(ray_submissions(ray_head), acked))

    with contextlib.suppress(AssertionError):  # Ray slow to take one: kill all the same
        wait_for(on_ray, "a job on Ray", timeout=45)
    wait_for(lambda: ledger.mid_body > 0 and (ledger.creating > 0 or len(ledger.jobs) >= JOBS),
         "an upload mid-body and a create in flight", timeout=60, every=0.005)
    in_flight = {"uploads mid-body": ledger.mid_body, "creates": ledger.creating,
                 "jobs acknowledged": len(ledger.jobs), "files acknowledged": len(ledger.files)}
    kill_9(api)
    return in_flight


def check_errors(errors: list[Seen], api_back: float) -> None:
    """Transport errors only for requests started before the new process answered; any
    HTTP error an enveloped JSON one with a code."""
    for seen in errors:
        if seen.error is not None:
            assert isinstance(seen.error, ALLOWED_TRANSPORT), (seen.what, repr(seen.error))
            assert seen.started < api_back, (
                f"{seen.what} started after the restart and failed: {seen.error!r}")
            continue
        r = seen.response
        assert r is not None
        assert r.headers.get("content-type", "").startswith("application/json"), (
            seen.what, r.status_code, r.text[:300])
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, (seen.what, r.text)
        assert error["code"] and error["message"], (seen.what, r.text)


def list_all(http: httpx.Client, path: str, limit: int) -> list[dict]:
    rows: list[dict] = []
    params: dict[str, str | int] = {"limit": limit}
    while True:
        page = http.get(path, params=params).raise_for_status().json()
        rows += page["data"]
        if not page.get("has_more"):
            return rows
        params["after"] = rows[-1]["id"]


def check_acknowledged(http: httpx.Client, ledger: Ledger, training_file: str) -> list[dict]:
    """Every answered upload listed once with its bytes, every answered create listed once;
    the jobs as listed."""
    files = [f["id"] for f in list_all(http, "/v1/files", 10000)]
    assert len(files) == len(set(files)), "a file listed twice"
    assert set(files) == set(ledger.files) | {training_file}
    for file_id, sent in ledger.files.items():
        got = http.get(f"/v1/files/{file_id}/content").raise_for_status().content
        assert got == sent, f"{file_id}: {len(got)} bytes back of {len(sent)} sent"
    jobs = list_all(http, "/v1/fine_tuning/jobs", 100)
    ids = [j["id"] for j in jobs]
    assert len(ids) == len(set(ids)), "a job listed twice"
    assert len(set(ledger.jobs)) == len(ledger.jobs) == JOBS
    assert set(ledger.jobs) <= set(ids), set(ledger.jobs) - set(ids)
    # A create cut off after it was sent may have made a job no one was told of.
    assert len(ids) - JOBS <= ledger.unknown_creates
    return jobs


def cancel(http: httpx.Client, job_id: str) -> None:
    """Cancel unless the job settled first; a 409 from racing the scheduler is retried."""
    for _ in range(30):
        r = http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
        if r.status_code == 200:
            return
        assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state", r.text
        if http.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] in TERMINAL:
            return
        time.sleep(0.5)
    raise AssertionError(f"could not cancel {job_id}")


def events(http: httpx.Client, job_id: str) -> list[str]:
    return [e["message"] for e in list_all(http, f"/v1/fine_tuning/jobs/{job_id}/events", 100)]


def says_why(job: dict, messages: list[str]) -> None:
    """A settled job names its outcome: the model, the cancel, or the error."""
    match job["status"]:
        case "succeeded":
            assert job["fine_tuned_model"], job
        case "failed":
            assert job["error"] and job["error"]["code"] and job["error"]["message"], job
        case status:
            assert status == "cancelled", job
            assert "Fine-tuning job cancelled" in messages, messages


def settle(http: httpx.Client, ray_head, jobs: list[dict],
           on_ray_at_kill: set[str]) -> Counter[str]:
    """Let the runs the kill caught on Ray finish, cancel every other job, and check each
    ends settled, saying why, with at most one Ray run, and no live run under a cancel;
    how many ended how."""
    for job in jobs:
        if job["id"] not in on_ray_at_kill and job["status"] not in TERMINAL:
            cancel(http, job["id"])

    def all_settled() -> bool:
        return all(j["status"] in TERMINAL for j in list_all(http, "/v1/fine_tuning/jobs", 100))

    wait_for(all_settled, "every job to settle", timeout=480, every=2)
    final = {j["id"]: j for j in list_all(http, "/v1/fine_tuning/jobs", 100)}
    for job_id in on_ray_at_kill:  # not cancelled: followed to its end by the new process
        assert final[job_id]["status"] in ("succeeded", "failed"), final[job_id]

    def cancelled_runs_ended() -> bool:
        runs = runs_by_job(ray_submissions(ray_head), set(final))
        return not any(r["status"] in RAY_LIVE for job_id, rs in runs.items()
                       if final[job_id]["status"] == "cancelled" for r in rs)

    wait_for(cancelled_runs_ended, "the runs of cancelled jobs to end", timeout=120, every=2)
    runs = runs_by_job(ray_submissions(ray_head), set(final))
    for job_id, job in final.items():
        messages = events(http, job_id)
        says_why(job, messages)
        submitted = [r["submission_id"] for r in runs.get(job_id, [])]
        assert submitted in ([], [f"openft-{job_id}"]), (job_id, submitted)  # never twice
        assert messages.count("Submitted the training run to Ray") == len(submitted), (
            job_id, submitted, messages)
        if job["status"] == "succeeded":
            assert submitted, job_id
        if job["status"] == "cancelled" and submitted:
            run = runs[job_id][0]
            # Stopped by the cancel, or finished before it: never left to run on after it.
            assert run["status"] == "STOPPED" or (
                run["end_time"] / 1000 <= job["finished_at"] + 1), (job_id, run)
    return Counter(j["status"] for j in final.values())


@pytest.fixture
def api_env(tmp_path: Path, s3_server, ray_head, tiny_model_dir: Path) -> dict[str, str]:
    return api_env_for(tmp_path, s3_server, ray_head, tiny_model_dir)


@pytest.mark.slow
def test_kill_9_mid_traffic_loses_nothing_launches_nothing_twice(api_env, tmp_path, ray_head):
    logs = tmp_path / "logs"
    url = f"http://127.0.0.1:{api_env['OPENFT_PORT']}"
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    traffic: Traffic | None = None
    try:
        with api_server(api_env, logs) as first:
            training_file = http.post(
                "/v1/files", data={"purpose": "fine-tune"},
                files={"file": ("train.jsonl", chat_jsonl(12))}).raise_for_status().json()["id"]
            traffic = Traffic(url, training_file, deadline=time.monotonic() + 300)
            traffic.start()
            in_flight = kill_mid_traffic(first, traffic.ledger, ray_head)
            at_kill = ray_submissions(ray_head)
        time.sleep(1)  # requests now meet a port no one listens on
        with api_server(api_env, logs):
            api_back = time.monotonic()
            traffic.restarted.set()
            traffic.join(timeout=240)
            jobs = check_acknowledged(http, traffic.ledger, training_file)
            check_errors(traffic.ledger.errors, api_back)
            on_ray_at_kill = set(runs_by_job(at_kill, {j["id"] for j in jobs}))
            ended = settle(http, ray_head, jobs, on_ray_at_kill)
        seen = Counter(type(e.error).__name__ if e.error else e.response.status_code
                       for e in traffic.ledger.errors if e.error or e.response)
        print(f"in flight at the kill: {in_flight}; jobs on Ray then: {len(on_ray_at_kill)}; "
              f"jobs listed: {len(jobs)}; ended: {dict(ended)}; errors seen: {dict(seen)}")
    finally:
        if traffic is not None:
            traffic.stop.set()
        http.close()


# -- the narrowest window: Ray has taken a run the database has not recorded ---------------------


class RayThatTakesRuns(FakeRay):
    """A fake Ray that runs ``while_taking`` after it has taken a run and before the API
    hears back: a kill of the API there, a lost answer, or a cancel landing meanwhile."""

    while_taking: Callable[[str], None] = staticmethod(lambda submission_id: None)

    def submit(self, submission_id: str, entrypoint: str, env_vars: dict[str, str],
               metadata: dict[str, str]) -> str:
        taken = super().submit(submission_id, entrypoint, env_vars, metadata)
        self.while_taking(submission_id)
        return taken


@pytest.fixture(params=["sqlite", "postgresql"])
def in_process(request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path
               ) -> Iterator[tuple[TestClient, Scheduler, RayThatTakesRuns]]:
    """The API in this process on either database, a scheduler the test ticks, its Ray."""
    ray = RayThatTakesRuns()
    with database_for(request.param, tmp_path) as database_url:
        settings = Settings(data_dir=tmp_path / "data", database_url=database_url,
                            ray_address="http://127.0.0.1:9", serving_url="http://127.0.0.1:9",
                            api_keys=f"{KEY}=org-r", default_base_model=False,
                            base_models={"tiny-llama": tiny_model_dir})
        app = create_app(settings, run_scheduler=False,
                         context=partial(build_context, blobs=MemoryBlobs(), ray=ray))
        with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as client:
            yield client, Scheduler(app.state.ctx), ray


def queued_job(client: TestClient) -> str:
    file_id = client.post("/v1/files", data={"purpose": "fine-tune"},
                          files={"file": ("t.jsonl", chat_jsonl(12))}).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-llama",
                                                    "training_file": file_id})
    return job.raise_for_status().json()["id"]


def test_a_run_the_dead_process_never_recorded_is_stopped_when_its_job_is_cancelled(
        in_process):
    client, scheduler, ray = in_process

    def killed(submission_id: str) -> None:
        raise httpx.ReadError("the API died before it heard Ray's answer")

    ray.while_taking = killed
    job_id = queued_job(client)
    scheduler.tick()  # validated, submitted; the launch rolled back as a dead process's would
    assert ray.status(f"openft-{job_id}").status == "PENDING"
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    scheduler.tick()
    assert ray.status(f"openft-{job_id}").status == "STOPPED"


def test_a_cancel_landing_while_ray_takes_the_run_stops_the_run(in_process):
    client, scheduler, ray = in_process
    job_id = queued_job(client)
    answers: list[str] = []
    cancel = threading.Thread(target=lambda: answers.append(
        client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"]))

    def cancel_meanwhile(submission_id: str) -> None:
        cancel.start()
        cancel.join(timeout=2)  # PostgreSQL: it waits for the row the launch holds

    ray.while_taking = cancel_meanwhile
    scheduler.tick()  # validated, submitted, the run recorded
    cancel.join(timeout=30)
    scheduler.tick()  # a stop the cancel could not make is owed: paid here
    assert answers == ["cancelled"]
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "cancelled"
    assert ray.status(f"openft-{job_id}").status == "STOPPED"
