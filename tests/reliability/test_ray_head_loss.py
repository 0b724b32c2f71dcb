"""The Ray head lost under a running job, and started again on the same ports (issue 16).

The API runs as its own process against a Ray head of this test's own. While a job trains
the tiny model, every process of the head is SIGKILLed at once, as when its pod is lost: GCS,
raylet, dashboard, Train workers and the job drivers Ray starts in sessions of their own.
While Ray is away the API still answers from its database (the running job is not settled,
``/readyz`` names Ray as down in the error envelope, a new job is accepted and waits, a
cancel is recorded and its stop owed). A new head then starts on the same ports, knowing
nothing of the old runs: the running job resumes from its last checkpoint and succeeds, the
job created meanwhile runs, the cancelled one is never run again, and every error the
client saw was enveloped JSON with a code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.processes import (
    ManagedProcess,
    free_ports,
    port_open,
    session_pids,
    start_ray_head,
)
from tests.service.conftest import chat_jsonl
from tests.support.api_process import KEY, api_env_for, api_process, wait_for
from tests.support.jobs import TERMINAL

pytestmark = pytest.mark.slow


class RestartableRayHead:
    """A Ray head on fixed GCS and dashboard ports, lost and started again like a head pod."""

    def __init__(self, temp_dir: Path, env: dict[str, str]):
        self.temp_dir, self.env = temp_dir, env
        self.gcs_port, self.dashboard_port = free_ports(2)
        self.proc: ManagedProcess | None = None
        self.start()

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> None:
        self.proc = start_ray_head(self.temp_dir, self.gcs_port, self.dashboard_port,
                                   num_cpus=4, log_dir=self.temp_dir, env=self.env)

    def lose(self) -> dict[int, str]:
        """SIGKILL every process the head started; the command lines it killed, by PID."""
        assert self.proc is not None
        killed = kill_process_tree(self.proc.pid)
        self.proc.popen.wait()
        self.proc = None
        return killed


def _children() -> dict[int, list[int]]:
    """Each live process's children, read from Linux's ``/proc``."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children[int(fields[1])].append(int(entry.name))
    return children


def _tree_of(sessions: set[int]) -> set[int]:
    """The members of ``sessions`` and all their descendants; ``sessions`` grows by those
    the descendants lead (Ray starts each job driver and its watcher in a session of its
    own, so signalling the head's session alone leaves them running)."""
    while True:
        found = {pid for sid in sessions for pid in session_pids(sid)}
        children = _children()
        todo = list(found)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        led = set()
        for pid in found:
            with contextlib.suppress(OSError):
                led.add(os.getsid(pid))
        if led <= sessions:
            return found
        sessions |= led


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def kill_process_tree(sid: int, timeout: float = 20.0) -> dict[int, str]:
    """Freeze every process of session ``sid`` and of the sessions its descendants lead
    (a stopped process forks no more), then SIGKILL them all at once; wait until none is
    left. By PID only. Returns the command lines of the processes it froze, by PID."""
    sessions, frozen = {sid}, dict[int, str]()
    while new := _tree_of(sessions) - frozen.keys():
        for pid in new:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
            frozen[pid] = _cmdline(pid)
    deadline = time.monotonic() + timeout
    while (alive := _tree_of(sessions)) and time.monotonic() < deadline:
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    left = _tree_of(sessions)
    assert not left, f"still alive after SIGKILL: {sorted(left)}"
    return frozen


@pytest.fixture
def own_ray_head(s3_server) -> Iterator[RestartableRayHead]:
    root = Path("/tmp") / f"rayhl-{os.getpid()}"  # Ray's socket paths must stay short
    head = RestartableRayHead(root, dict(os.environ, **s3_server.env))
    try:
        yield head
    finally:
        if head.proc is not None:
            head.lose()
        shutil.rmtree(root, ignore_errors=True)


class Client:
    """The API over HTTP, keeping every error answer it got to check their shape."""

    def __init__(self, port: str):
        self.errors: list[tuple[str, int, bytes]] = []
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                 headers={"Authorization": f"Bearer {KEY}"},
                                 event_hooks={"response": [self._keep_error]})

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def _keep_error(self, r: httpx.Response) -> None:
        if r.status_code >= 400:
            r.read()
            self.errors.append((f"{r.request.method} {r.request.url.path}", r.status_code,
                                r.content))

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, **kwargs)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def upload(self, body: bytes) -> str:
        return self.ok("POST", "/v1/files", data={"purpose": "fine-tune"},
                       files={"file": ("t.jsonl", body, "application/jsonl")})["id"]

    def create_job(self, file_id: str, n_epochs: int) -> dict[str, Any]:
        return self.ok("POST", "/v1/fine_tuning/jobs", json={
            "model": "tiny-llama", "training_file": file_id,
            "hyperparameters": {"n_epochs": n_epochs}})

    def job(self, job_id: str) -> dict[str, Any]:
        return self.ok("GET", f"/v1/fine_tuning/jobs/{job_id}")

    def events(self, job_id: str) -> list[dict[str, Any]]:
        page = self.ok("GET", f"/v1/fine_tuning/jobs/{job_id}/events",
                       params={"limit": 1000})
        return list(reversed(page["data"]))  # oldest first

    def checkpoint_steps(self, job_id: str) -> list[int]:
        page = self.ok("GET", f"/v1/fine_tuning/jobs/{job_id}/checkpoints")
        return sorted(c["step_number"] for c in page["data"])


def settled(api: Client, job_id: str, timeout: float) -> dict[str, Any]:
    return wait_for(lambda: (j := api.job(job_id))["status"] in TERMINAL and j,
                    f"{job_id} to settle", timeout)


def ray_runs(head: RestartableRayHead) -> dict[str, str]:
    """The openft runs the head knows: submission id -> status."""
    r = httpx.get(f"{head.dashboard_url}/api/jobs/", timeout=10)
    r.raise_for_status()
    return {j["submission_id"]: j["status"] for j in r.json()
            if (j.get("submission_id") or "").startswith("openft-")}


def test_ray_head_lost_and_restarted(own_ray_head, s3_server, tiny_model_dir, tmp_path):
    env = api_env_for(tmp_path, s3_server, own_ray_head, tiny_model_dir)
    env["OPENFT_MAX_CONCURRENT_JOBS"] = "2"  # the job to cancel has a run on Ray too
    with api_process(env, tmp_path), Client(env["OPENFT_PORT"]) as api:
        training_file = api.upload(chat_jsonl(12))
        running = api.create_job(training_file, n_epochs=6)["id"]
        to_cancel = api.create_job(training_file, n_epochs=6)["id"]
        first = wait_for(lambda: api.checkpoint_steps(running),
                         "a first checkpoint of the running job", 300)[-1]
        wait_for(lambda: api.job(to_cancel)["status"] == "running",
                 "the second job's run on Ray", 120)
        assert api.job(running)["status"] == "running"

        killed = own_ray_head.lose().values()
        # The head's own processes and both training drivers (in sessions of their own).
        for part in ("gcs_server", "raylet", "dashboard.py"):
            assert any(part in c for c in killed), (part, killed)
        assert sum("-m training.driver" in c for c in killed) >= 2, killed
        assert not port_open(own_ray_head.dashboard_port)

        # Ray is away: the API answers from its database.
        assert api.job(running)["status"] == "running"
        listed = api.ok("GET", "/v1/fine_tuning/jobs")["data"]
        assert {j["id"]: j["status"] for j in listed}[running] == "running"
        ready = api.http.get("/readyz")
        assert ready.status_code == 503, ready.text
        error = ready.json()["error"]
        assert error["code"] == "not_ready" and "ray is down" in error["message"], error
        assert "database is down" not in error["message"] and "s3 is down" not in error[
            "message"], error
        during = api.create_job(training_file, n_epochs=1)
        assert during["status"] == "validating_files", during
        cancelled = api.ok("POST", f"/v1/fine_tuning/jobs/{to_cancel}/cancel")
        assert cancelled["status"] == "cancelled", cancelled
        time.sleep(5)  # several scheduler ticks with Ray away
        assert api.job(running)["status"] == "running"
        assert api.job(during["id"])["status"] == "validating_files"
        assert api.job(to_cancel)["status"] == "cancelled"

        own_ray_head.start()  # a new head pod: same ports, none of the old runs

        done = settled(api, running, 300)
        assert done["status"] == "succeeded", done["error"]
        events = api.events(running)
        assert any("resuming from checkpoint" in e["message"] for e in events), events
        steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
        assert max(steps) > first
        # The steps up to the checkpoint were not trained again (the run resumed there).
        assert sorted(s for s in steps if s <= first) == list(range(1, first + 1)), steps
        new = settled(api, during["id"], 300)
        assert new["status"] == "succeeded", new["error"]
        assert api.job(to_cancel)["status"] == "cancelled"
        assert [e["message"] for e in api.events(to_cancel)].count(
            "Fine-tuning job cancelled") == 1

        # The new head ran each job once: the resumed run and the new job, not the cancelled.
        assert ray_runs(own_ray_head) == {f"openft-{running}-r1": "SUCCEEDED",
                                          f"openft-{during['id']}": "SUCCEEDED"}
        ready = api.http.get("/readyz")
        assert ready.status_code == 200, ready.text
        for call, status, body in api.errors:
            assert httpx.Response(status, content=body).json()["error"]["code"], (call, body)
        assert [(call, status) for call, status, _ in api.errors] == [("GET /readyz", 503)]
