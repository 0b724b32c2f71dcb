"""Two API processes on one PostgreSQL: each job is launched once and ingested once.

Real PostgreSQL, real local Ray, real SeaweedFS, real training of the tiny model.
"""

from __future__ import annotations

from contextlib import ExitStack

import httpx
import pytest

from devstack.databases import fresh_database
from devstack.processes import free_port
from tests.service.conftest import chat_jsonl
from tests.support.api_process import api_process, wait_status

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_url():
    with fresh_database("openft_replicas") as url:
        yield url


def test_two_replicas_never_launch_twice_and_share_the_job_limit(api_env, pg_url, tmp_path,
                                                                 ray_head):
    envs = [dict(api_env, OPENFT_DATABASE_URL=pg_url, OPENFT_PORT=str(free_port()),
                 OPENFT_MAX_CONCURRENT_JOBS="1", OPENFT_SCHEDULER_INTERVAL_S="0.2")
            for _ in range(2)]
    with ExitStack() as stack:
        first = stack.enter_context(api_process(envs[0], tmp_path / "a"))
        second = stack.enter_context(api_process(envs[1], tmp_path / "b"))
        f = first.files.create(file=("t.jsonl", chat_jsonl(12)), purpose="fine-tune")
        jobs = [first.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                              hyperparameters={"n_epochs": 1})
                for _ in range(2)]
        spans = []
        for job in jobs:
            done = wait_status(second, job.id, {"succeeded", "failed", "cancelled"})
            assert done.status == "succeeded", done.error
            events = list(second.fine_tuning.jobs.list_events(job.id, limit=500))
            messages = [e.message for e in events]
            assert messages.count("Submitted the training run to Ray") == 1
            assert messages.count("Files validated, moving job to queued state") == 1
            assert messages.count("The job has successfully completed") == 1
            steps = [e.data["step"] for e in events if e.type == "metrics"]
            assert steps and len(steps) == len(set(steps))
            submitted = next(e.created_at for e in events
                             if e.message == "Submitted the training run to Ray")
            spans.append((submitted, done.finished_at))
        # max_concurrent_jobs=1 holds across both replicas: the runs did not overlap
        (start_a, end_a), (start_b, end_b) = sorted(spans)
        assert start_b >= end_a

    ray_jobs = httpx.get(f"{ray_head.dashboard_url}/api/jobs/").json()
    for job in jobs:
        runs = [r for r in ray_jobs if (r.get("metadata") or {}).get("openft_job_id") == job.id]
        assert len(runs) == 1
