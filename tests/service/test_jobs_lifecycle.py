"""Pause/resume state rules, model deletion, metadata and upload limits (no Ray needed)."""

from __future__ import annotations

from service.db import JobRow
from service.ids import now
from tests.service.test_files_and_auth import assert_envelope, upload
from tests.service.test_jobs_api import create_job


def settle_succeeded(app, job_id: str) -> str:
    """Mark a job succeeded as the scheduler would; returns its model name."""
    with app.state.ctx.db.session() as s:
        row = s.get(JobRow, job_id)
        row.status, row.finished_at, row.trained_tokens = "succeeded", now(), 10
        row.fine_tuned_model = f"ft:tiny-llama:{row.organization}::{row.model_key}"
        return row.fine_tuned_model


def test_pause_and_resume_follow_openai_state_rules(client, app, as_a):
    from service.jobs.scheduler import Scheduler

    file_id = upload(client, as_a).json()["id"]
    job_id = create_job(client, as_a, file_id).json()["id"]
    # validating_files cannot be paused; 400 (not 409, which the SDK would retry)
    assert_envelope(client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=as_a), 400)
    Scheduler(app.state.ctx).validate(job_id)
    paused = client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=as_a).json()
    assert paused["status"] == "paused"
    assert_envelope(client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=as_a), 400)
    resumed = client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=as_a).json()
    assert resumed["status"] == "queued"
    assert_envelope(client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=as_a), 400)
    messages = [e["message"] for e in
                client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=as_a).json()["data"]]
    assert messages[:2] == ["Fine-tuning job resumed", "Fine-tuning job paused"]


def test_paused_job_can_be_cancelled(client, app, as_a):
    from service.jobs.scheduler import Scheduler

    job_id = create_job(client, as_a, upload(client, as_a).json()["id"]).json()["id"]
    Scheduler(app.state.ctx).validate(job_id)
    client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=as_a)
    job = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=as_a).json()
    assert job["status"] == "cancelled"


def test_delete_model_stops_listing_and_serving_it(client, app, as_a, as_b):
    job_id = create_job(client, as_a, upload(client, as_a).json()["id"]).json()["id"]
    name = settle_succeeded(app, job_id)
    # another organization cannot delete it, nor anyone a base model
    assert_envelope(client.delete(f"/v1/models/{name}", headers=as_b), 404)
    assert_envelope(client.delete("/v1/models/tiny-llama", headers=as_a), 403)
    assert client.delete(f"/v1/models/{name}", headers=as_a).json() == {
        "id": name, "object": "model", "deleted": True}
    assert name not in [m["id"] for m in client.get("/v1/models", headers=as_a).json()["data"]]
    assert_envelope(client.get(f"/v1/models/{name}", headers=as_a), 404)
    chat = client.post("/v1/chat/completions", headers=as_a,
                       json={"model": name, "messages": [{"role": "user", "content": "x"}]})
    assert_envelope(chat, 404, param="model")
    # the job stays
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=as_a).json()
    assert job["status"] == "succeeded" and job["fine_tuned_model"] == name


def test_model_ids_with_encoded_slash_and_colons_route(settings, client, app, as_a):
    from fastapi.testclient import TestClient

    from service.main import create_app

    job_id = create_job(client, as_a, upload(client, as_a).json()["id"]).json()["id"]
    name = settle_succeeded(app, job_id)
    assert client.get(f"/v1/models/{name}", headers=as_a).json()["id"] == name
    assert_envelope(client.get("/v1/models/org%2Fmissing", headers=as_a), 404)
    # an id holding "/" arrives percent-encoded (as the SDK sends it) and still resolves
    slashed = settings.model_copy(update={"base_models": {
        "acme/tiny": settings.base_models["tiny-llama"]}})
    with TestClient(create_app(slashed, run_scheduler=False)) as other:
        assert other.get("/v1/models/acme%2Ftiny", headers=as_a).json()["id"] == "acme/tiny"


def test_metadata_filter_limits_and_integrations(client, as_a):
    file_id = upload(client, as_a).json()["id"]
    wandb = [{"type": "wandb", "wandb": {"project": "p"}}]
    red = create_job(client, as_a, file_id, metadata={"team": "red"}, integrations=wandb).json()
    create_job(client, as_a, file_id, metadata={"team": "blue"})
    assert red["integrations"] == wandb
    listed = client.get("/v1/fine_tuning/jobs?metadata[team]=red", headers=as_a).json()
    assert [j["id"] for j in listed["data"]] == [red["id"]]
    too_many = {f"k{i}": "v" for i in range(17)}
    assert_envelope(create_job(client, as_a, file_id, metadata=too_many), 400, param="metadata")
    assert_envelope(create_job(client, as_a, file_id, metadata={"k": "v" * 513}), 400,
                    param="metadata.k")


def test_file_used_by_active_job_cannot_be_deleted(client, as_a):
    file_id = upload(client, as_a).json()["id"]
    job_id = create_job(client, as_a, file_id).json()["id"]
    assert_envelope(client.delete(f"/v1/files/{file_id}", headers=as_a), 400, param="file_id")
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=as_a)
    assert client.delete(f"/v1/files/{file_id}", headers=as_a).json()["deleted"] is True


def test_upload_over_the_limit_is_refused_and_nothing_is_stored(settings, as_a):
    from fastapi.testclient import TestClient

    from service.main import create_app

    small = create_app(settings.model_copy(update={"max_upload_bytes": 100}),
                       run_scheduler=False)
    with TestClient(small) as client:
        assert_envelope(upload(client, as_a, b"x" * 101), 413, param="file")
        assert client.get("/v1/files", headers=as_a).json()["data"] == []
        assert upload(client, as_a, b"x" * 100).json()["bytes"] == 100


def test_unknown_after_cursor_names_after(client, as_a):
    assert_envelope(client.get("/v1/fine_tuning/jobs?after=ftjob-nope", headers=as_a), 404,
                    param="after")


def test_nul_in_chat_model_is_a_400_not_a_500(client, as_a):
    resp = client.post("/v1/chat/completions", headers=as_a,
                       json={"model": "ft:x\u0000", "messages": [{"role": "user", "content": "x"}]})
    assert_envelope(resp, 400, param="model")
