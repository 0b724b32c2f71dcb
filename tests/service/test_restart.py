"""The API process can die mid-job: Ray keeps training, a new API process settles the job.

Also: cancel stops the Ray work. Real local Ray, real SeaweedFS, real DeepSpeed training of
the tiny model; the API runs as its own uvicorn process so it can be killed.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.service.conftest import chat_jsonl
from tests.support.api_process import api_process, wait_for, wait_status

pytestmark = pytest.mark.slow


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
        wait_for(lambda: ray_status(ray_head, job.id) in ("STOPPED", "FAILED"),
                 "Ray to end the run", timeout=60)
        assert ray_status(ray_head, job.id) == "STOPPED"
        time.sleep(2)  # the scheduler keeps running: the job stays cancelled
        final = client.fine_tuning.jobs.retrieve(job.id)
        assert final.status == "cancelled" and final.fine_tuned_model is None
