"""Pause and resume through the API on real Ray Train + DeepSpeed: the run checkpoints and
ends (its Ray workers are released), and the resumed run continues from that step.
"""

from __future__ import annotations

import httpx
import pytest

from tests.service.conftest import chat_jsonl
from tests.support.api_process import api_process, wait_for, wait_status

pytestmark = pytest.mark.slow


def metric_steps(client, job_id: str) -> list[int]:
    return [e.data["step"] for e in client.fine_tuning.jobs.list_events(job_id, limit=1000)
            if e.type == "metrics"]


def test_pause_checkpoints_releases_workers_and_resume_continues(api_env, tmp_path, ray_head):
    with api_process(api_env, tmp_path) as client:
        f = client.files.create(file=("t.jsonl", chat_jsonl(12)), purpose="fine-tune")
        v = client.files.create(file=("v.jsonl", chat_jsonl(10)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                             validation_file=v.id,
                                             hyperparameters={"n_epochs": 8})
        wait_status(client, job.id, {"running"})
        wait_for(lambda: len(metric_steps(client, job.id)) >= 2, "the first steps")
        wait_for(lambda: (client.fine_tuning.jobs.retrieve(job.id).estimated_finish or 0)
                 > job.created_at, "estimated_finish while running")

        assert client.fine_tuning.jobs.pause(job.id).status == "paused"
        wait_for(lambda: any("resume continues from there" in e.message for e in
                             client.fine_tuning.jobs.list_events(job.id, limit=100)),
                 "the run to checkpoint and end")
        first_run = httpx.get(f"{ray_head.dashboard_url}/api/jobs/openft-{job.id}").json()
        assert first_run["status"] == "SUCCEEDED"  # ended cleanly: workers released
        paused_at = max(metric_steps(client, job.id))
        assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert paused_at in [c.step_number for c in checkpoints]
        # a paused job's checkpoints are models the organization can already name
        models = [m.id for m in client.models.list()]
        assert all(c.fine_tuned_model_checkpoint in models for c in checkpoints)

        assert client.fine_tuning.jobs.resume(job.id).status == "queued"
        done = wait_status(client, job.id, {"succeeded", "failed", "cancelled"})
        assert done.status == "succeeded", done.error
        steps = metric_steps(client, job.id)
        total = max(steps)
        assert sorted(steps) == list(range(1, total + 1))  # continued, nothing repeated
        assert paused_at < total
        # The base model was measured once, before the first run's step 1, not again on
        # resume; every checkpoint (the pause's, mid-epoch, too) has the whole file's loss.
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
        assert sum(m.startswith("Validation loss before training") for m in messages) == 1
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id, limit=100).data
        assert all(c.metrics.full_valid_loss is not None for c in checkpoints)
        best = min(checkpoints, key=lambda c: (c.metrics.full_valid_loss, c.step_number))
        extra = client.fine_tuning.jobs.retrieve(job.id).model_extra or {}
        assert extra["best_checkpoint"]["id"] == best.id and extra["base_valid_loss"] > 0
        second = httpx.get(f"{ray_head.dashboard_url}/api/jobs/openft-{job.id}-r1").json()
        assert second["status"] == "SUCCEEDED"
