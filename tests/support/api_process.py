"""An API process of its own (uvicorn, as in production), so tests can kill and restart it."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from openai import OpenAI

from devstack.processes import free_port, served_by, start, wait_until

KEY = "sk-restart"


def api_env_for(tmp_path: Path, s3_server, ray_head, tiny_model_dir) -> dict[str, str]:
    return dict(
        os.environ,
        OPENFT_DATA_DIR=str(tmp_path / "data"),
        OPENFT_PORT=str(free_port()),
        OPENFT_S3_ENDPOINT_URL=s3_server.endpoint_url,
        OPENFT_S3_BUCKET=s3_server.bucket,
        OPENFT_S3_ACCESS_KEY=s3_server.access_key,
        OPENFT_S3_SECRET_KEY=s3_server.secret_key,
        OPENFT_RAY_ADDRESS=ray_head.dashboard_url,
        OPENFT_SERVING_URL="http://127.0.0.1:9",
        OPENFT_API_KEYS=f"{KEY}=org-r",
        OPENFT_DEFAULT_BASE_MODEL="false",
        OPENFT_BASE_MODELS=json.dumps({"tiny-llama": str(tiny_model_dir)}),
        OPENFT_SCHEDULER_INTERVAL_S="0.5",
    )


@contextmanager
def api_process(env: dict[str, str], log_dir: Path) -> Iterator[OpenAI]:
    port = env["OPENFT_PORT"]
    proc = start("api", [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app",
                         "--host", "127.0.0.1", "--port", port], log_dir, env)
    try:
        wait_until(lambda: served_by(f"http://127.0.0.1:{port}/healthz", proc.pid), "API", proc, 60)
        yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    finally:
        proc.stop()


def wait_for(predicate, what: str, timeout: float = 300, every: float = 1.0):
    """Poll every ``every`` seconds until ``predicate()`` gives something true, and return
    it; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_status(client: OpenAI, job_id: str, wanted: set[str], timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in wanted:
            return job
        time.sleep(1)
    raise AssertionError(f"{job_id} is {job.status}, wanted {wanted}")


