"""The API process can die mid-job: Ray keeps training, a new API process settles the job.

Also: cancel stops the Ray work. Real local Ray, real SeaweedFS, real DeepSpeed training of
the tiny model; the API runs as its own uvicorn process so it can be killed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from service.processes import free_port, http_ok, start, wait_until
from tests.service.conftest import chat_jsonl

pytestmark = pytest.mark.slow
KEY = "sk-restart"


@pytest.fixture
def api_env(tmp_path: Path, s3_server, ray_head, tiny_model_dir) -> dict[str, str]:
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
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), "API", proc, 60)
        yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    finally:
        proc.stop()


def wait_status(client: OpenAI, job_id: str, wanted: set[str], timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in wanted:
            return job
        time.sleep(1)
    raise AssertionError(f"{job_id} is {job.status}, wanted {wanted}")


def ray_status(ray_head, job_id: str) -> str:
    return httpx.get(f"{ray_head.dashboard_url}/api/jobs/openft-{job_id}").json()["status"]


def test_api_restart_keeps_running_job(api_env, tmp_path, ray_head):
    with api_process(api_env, tmp_path) as client:
        f = client.files.create(file=("t.jsonl", chat_jsonl(12)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                             hyperparameters={"n_epochs": 3})
        wait_status(client, job.id, {"running"})
    # The API is gone; Ray keeps training.
    assert ray_status(ray_head, job.id) in ("PENDING", "RUNNING", "SUCCEEDED")
    with api_process(api_env, tmp_path) as client:
        done = wait_status(client, job.id, {"succeeded", "failed", "cancelled"})
        assert done.status == "succeeded", done.error
        assert done.trained_tokens and done.fine_tuned_model
        steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=200)
                 if e.type == "metrics"]
        assert len(steps) == len(set(steps))  # no event ingested twice across the restart


def test_cancel_stops_the_ray_work(api_env, tmp_path, ray_head):
    with api_process(api_env, tmp_path) as client:
        f = client.files.create(file=("t.jsonl", chat_jsonl(12)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                             hyperparameters={"n_epochs": 10})
        wait_status(client, job.id, {"running"})
        cancelled = client.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled"
        deadline = time.monotonic() + 60
        while ray_status(ray_head, job.id) not in ("STOPPED", "FAILED") and \
                time.monotonic() < deadline:
            time.sleep(1)
        assert ray_status(ray_head, job.id) == "STOPPED"
        time.sleep(2)  # the scheduler keeps running: the job stays cancelled
        final = client.fine_tuning.jobs.retrieve(job.id)
        assert final.status == "cancelled" and final.fine_tuned_model is None
