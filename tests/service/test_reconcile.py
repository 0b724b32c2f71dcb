"""After a restart, a running job whose Ray run is gone (the cluster was replaced) resumes from
its last checkpoint on the new cluster, and one with no checkpoint fails with server_error.

Real Ray heads (the session's, then a second fresh one), real SeaweedFS and PostgreSQL-free
SQLite in the data dir, real training of the tiny model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RayHead, s3_ray_head
from tests.service.conftest import chat_jsonl
from tests.support.api_process import api_process, wait_for, wait_status

pytestmark = pytest.mark.slow


@pytest.fixture
def second_ray_head(s3_server) -> Iterator[RayHead]:
    with s3_ray_head(Path("/tmp") / f"ray2-{os.getpid()}", s3_server) as head:
        yield head


def test_lost_run_resumes_from_its_last_checkpoint(api_env, tmp_path, ray_head,
                                                   second_ray_head):
    with api_process(api_env, tmp_path) as client:
        f = client.files.create(file=("t.jsonl", chat_jsonl(12)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                             hyperparameters={"n_epochs": 6})
        wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data,
                 "the first checkpoint")
        first = client.fine_tuning.jobs.checkpoints.list(job.id).data[-1].step_number
    # The cluster is replaced: the old run stops, the new head has never heard of it.
    httpx.post(f"{ray_head.dashboard_url}/api/jobs/openft-{job.id}/stop")
    moved = dict(api_env, OPENFT_RAY_ADDRESS=second_ray_head.dashboard_url)
    with api_process(moved, tmp_path) as client:
        done = wait_status(client, job.id, {"succeeded", "failed", "cancelled"}, timeout=600)
        assert done.status == "succeeded", done.error
        events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=500)]
        assert any("resuming from checkpoint" in m for m in events)
        steps = sorted(e.data["step"] for e in client.fine_tuning.jobs.list_events(
            job.id, limit=500) if e.type == "metrics")
        assert steps[-1] > first
    resumed = httpx.get(f"{second_ray_head.dashboard_url}/api/jobs/openft-{job.id}-r1").json()
    assert resumed["status"] == "SUCCEEDED"


def test_lost_run_without_checkpoint_fails_with_server_error(api_env, tmp_path, ray_head,
                                                             second_ray_head):
    with api_process(api_env, tmp_path) as client:
        # One long epoch: its only checkpoint comes at the end, long after we stop it.
        f = client.files.create(file=("t.jsonl", chat_jsonl(400)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                             hyperparameters={"n_epochs": 1})
        wait_status(client, job.id, {"running"})
        assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []
    httpx.post(f"{ray_head.dashboard_url}/api/jobs/openft-{job.id}/stop")
    moved = dict(api_env, OPENFT_RAY_ADDRESS=second_ray_head.dashboard_url)
    with api_process(moved, tmp_path) as client:
        done = wait_status(client, job.id, {"succeeded", "failed", "cancelled"}, timeout=120)
        assert done.status == "failed" and done.error.code == "server_error"
