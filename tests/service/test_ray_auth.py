"""A Ray head with token auth (``RAY_AUTH_MODE=token``, as KubeRay's ``authOptions`` start
it): its Jobs API refuses callers without the token, and :class:`RayJobs` given the token
submits, watches and sizes the cluster as on an open one."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from devstack.processes import free_ports, start_ray_head
from service.context import RunState
from service.jobs.ray_jobs import RayJobs
from service.settings import Settings

pytestmark = pytest.mark.slow
T = TypeVar("T")


@dataclass
class TokenHead:
    dashboard_url: str
    token: str


@pytest.fixture(scope="module")
def token_head() -> Iterator[TokenHead]:
    root = Path("/tmp") / f"ray-auth-{os.getpid()}"  # Ray's socket paths must stay short
    token = secrets.token_hex(32)  # what Ray generates itself
    gcs_port, dash_port = free_ports(2)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    proc = start_ray_head(root, gcs_port, dash_port, num_cpus=1, log_dir=root, env=env,
                          num_gpus=0)
    try:
        yield TokenHead(f"http://127.0.0.1:{dash_port}", token)
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_the_jobs_api_refuses_a_caller_without_the_token(token_head: TokenHead) -> None:
    url = f"{token_head.dashboard_url}/api/jobs/"

    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert httpx.get(url, headers={"Authorization": f"Bearer {token_head.token}"}
                     ).status_code == 200


def test_ray_jobs_without_the_token_finds_the_cluster_closed(token_head: TokenHead) -> None:
    ray = RayJobs(token_head.dashboard_url)
    try:
        with pytest.raises(PermissionError, match="OPENFT_RAY_AUTH_TOKEN"):
            ray.ping()
        assert ray.cluster() is None
        with pytest.raises(RuntimeError, match="401"):
            ray.submit("openft-no-token", "true", env_vars={}, metadata={})
    finally:
        ray.close()


def test_ray_jobs_with_the_token_submits_watches_and_sizes(token_head: TokenHead) -> None:
    settings = Settings(ray_address=token_head.dashboard_url, ray_auth_token=token_head.token)
    ray = RayJobs.from_settings(settings)
    try:
        ray.ping()
        nodes = _wait(ray.cluster, "the head to list itself")
        assert [n.total.cpus for n in nodes] == [1.0]
        # The driver inherits the head's environment, token included: it joins the cluster
        # and runs a task with nothing from us but the entrypoint.
        entrypoint = (f"{sys.executable} -c 'import ray; ray.init(); "
                      "print(ray.get(ray.remote(lambda: 41 + 1).remote()))'")
        sid = ray.submit("openft-token-auth", entrypoint, env_vars={"PYTHONUNBUFFERED": "1"},
                         metadata={"openft_job_id": "token-auth"})
        state = _wait(lambda: _terminal(ray.status(sid)), "the job to end", timeout=120)
        assert state.status == "SUCCEEDED", state.message
        logs = httpx.get(f"{token_head.dashboard_url}/api/jobs/{sid}/logs",
                         headers={"Authorization": f"Bearer {token_head.token}"}).json()
        assert "42" in logs["logs"]
    finally:
        ray.close()


def _terminal(state: RunState | None) -> RunState | None:
    return state if state and state.status in ("SUCCEEDED", "FAILED", "STOPPED") else None


def _wait(probe: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := probe()) is not None:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
