"""Deleting a fine-tuned model tells serving, through S3, to stop serving every adapter of it."""

from __future__ import annotations

from contract.bucket import deleted_marker_key
from service.db import CheckpointRow
from service.ids import new_id, now
from tests.service.conftest import chat_jsonl
from tests.service.test_files_and_auth import assert_envelope, upload
from tests.service.test_jobs_api import create_job
from tests.service.test_jobs_methods import succeed


def test_delete_marks_the_model_and_each_checkpoint_adapter_in_s3(client, app, as_a, as_b):
    file_id = upload(client, as_a, chat_jsonl(12)).json()["id"]
    job_id = create_job(client, as_a, file_id).json()["id"]
    model, model_key = succeed(app, job_id)
    with app.state.ctx.db.session() as s:
        s.add(CheckpointRow(id=new_id("ftckpt"), job_id=job_id, created_at=now(), step_number=3,
                            fine_tuned_model_checkpoint=f"{model}:ckpt-step-3",
                            metrics={"step": 3}, adapter_key=f"{model_key}-step-00000003"))
    blobs = app.state.ctx.blobs
    markers = [deleted_marker_key(model_key), deleted_marker_key(f"{model_key}-step-00000003")]

    assert_envelope(client.delete(f"/v1/models/{model}", headers=as_b), 404)
    assert not any(blobs.exists(key) for key in markers)  # another organization: nothing

    deleted = client.delete(f"/v1/models/{model}", headers=as_a).json()

    assert deleted == {"id": model, "object": "model", "deleted": True}
    assert all(blobs.exists(key) for key in markers)
    assert_envelope(client.get(f"/v1/models/{model}", headers=as_a), 404)
    assert_envelope(client.post("/v1/chat/completions", headers=as_a, json={
        "model": f"{model}:ckpt-step-3", "messages": [{"role": "user", "content": "hi"}]}), 404)
