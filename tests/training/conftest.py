"""A Ray head whose every listener gets a free port.

The shared ``ray_head`` fixture leaves the dashboard agent on Ray's default port 52365 (and
metrics, client server, ... on theirs). When another Ray head on the host (a dev stack)
already holds 52365, the new head's agent dies at start and the Jobs API answers "No
available agent to submit job" forever. Until ``service.processes.start_ray_head`` picks
these ports itself, this override does, for the tests in this folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.processes import free_port, http_ok, start, venv_bin, wait_until
from tests.conftest import RayHead, S3Server


@pytest.fixture(scope="session")
def ray_head(s3_server: S3Server) -> Iterator[RayHead]:
    root = Path("/tmp") / f"ray-tr-{os.getpid()}"  # Ray's socket paths must stay short
    root.mkdir(parents=True, exist_ok=True)
    gcs_port, dash_port = free_port(), free_port()
    argv = [
        venv_bin("ray"), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
        "--num-cpus=4", "--num-gpus=0",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash_port}", f"--temp-dir={root}", "--disable-usage-stats",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
    ]  # fmt: skip
    env = dict(os.environ, **s3_server.env)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    proc = start("ray-head", argv, root, env)
    try:
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{dash_port}/api/version"),
            "Ray dashboard", proc, 120,
        )  # fmt: skip
        yield RayHead(f"http://127.0.0.1:{dash_port}", f"127.0.0.1:{gcs_port}", proc)
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)
