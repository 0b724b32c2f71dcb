"""Job creation, validation before queueing, events and isolation (no Ray needed)."""

from __future__ import annotations

import json

from contract.bucket import file_key, spec_key
from service.jobs.scheduler import Scheduler
from service.jobs.service import to_object
from tests.service.conftest import chat_jsonl, chat_line
from tests.service.test_files_and_auth import assert_envelope, upload


def create_job(client, headers, file_id, **extra):
    return client.post("/v1/fine_tuning/jobs", headers=headers,
                       json={"model": "tiny-llama", "training_file": file_id, **extra})


def test_create_returns_openai_job_and_events(client, as_a):
    file_id = upload(client, as_a).json()["id"]
    job = create_job(client, as_a, file_id, suffix="demo", metadata={"team": "x"}).json()
    assert job["object"] == "fine_tuning.job" and job["id"].startswith("ftjob-")
    assert job["status"] == "validating_files" and job["error"] is None
    assert job["organization_id"] == "org-a" and job["training_file"] == file_id
    assert job["fine_tuned_model"] is None and isinstance(job["seed"], int)
    assert job["metadata"] == {"team": "x"}
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=as_a).json()
    assert events["object"] == "list"
    assert all(e["id"].startswith("ftevent-") for e in events["data"])
    assert events["data"][-1]["message"].startswith("Created fine-tuning job")


def test_validation_resolves_auto_hyperparameters_and_writes_spec(client, app, as_a):
    file_id = upload(client, as_a, chat_jsonl(12)).json()["id"]
    job_id = create_job(client, as_a, file_id).json()["id"]
    Scheduler(app.state.ctx).validate(job_id)
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=as_a).json()
    assert job["status"] == "queued"
    # 12 examples: ceil(100/12)=9 epochs; batch 1 (never rounded up to the workers);
    # multiplier 1.0 (README rule)
    assert job["hyperparameters"] == {"batch_size": 1, "learning_rate_multiplier": 1.0,
                                      "n_epochs": 9}
    spec = json.loads(app.state.ctx.blobs.get(spec_key(job_id)))
    assert spec["hyperparameters"]["n_epochs"] == 9
    assert spec["training_file_key"] == file_key(file_id)


def test_bad_line_fails_job_naming_line_and_file(client, app, as_a):
    lines = chat_jsonl(12).decode().splitlines()
    lines[2] = "{not json"
    file_id = upload(client, as_a, ("\n".join(lines) + "\n").encode()).json()["id"]
    job_id = create_job(client, as_a, file_id).json()["id"]
    Scheduler(app.state.ctx).validate(job_id)
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=as_a).json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_training_file"
    assert job["error"]["param"] == "training_file"
    assert "Line 3" in job["error"]["message"] and file_id in job["error"]["message"]
    # the stored file is untouched
    content = client.get(f"/v1/files/{file_id}/content", headers=as_a).content
    assert content.decode().splitlines()[2] == "{not json"


def test_too_few_examples_fails_with_invalid_n_examples(client, app, as_a):
    file_id = upload(client, as_a, (chat_line(0) + "\n").encode()).json()["id"]
    job_id = create_job(client, as_a, file_id).json()["id"]
    Scheduler(app.state.ctx).validate(job_id)
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=as_a).json()
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_n_examples"


def test_unknown_model_and_file_answer_4xx_naming_param(client, as_a):
    file_id = upload(client, as_a).json()["id"]
    resp = client.post("/v1/fine_tuning/jobs", headers=as_a,
                       json={"model": "gpt-9", "training_file": file_id})
    assert_envelope(resp, 404, param="model", code="model_not_found")
    assert_envelope(create_job(client, as_a, "file-missing"), 400, param="training_file")
    assert_envelope(create_job(client, as_a, file_id, suffix="bad:suffix"), 400, param="suffix")
    assert_envelope(client.get("/v1/fine_tuning/jobs/ftjob-nope", headers=as_a), 404)


def test_cancel_and_state_conflict(client, as_a):
    file_id = upload(client, as_a).json()["id"]
    job_id = create_job(client, as_a, file_id).json()["id"]
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=as_a).json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    again = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=as_a)
    assert_envelope(again, 400)


def test_jobs_list_newest_first_and_paginated(client, as_a):
    file_id = upload(client, as_a).json()["id"]
    ids = [create_job(client, as_a, file_id).json()["id"] for _ in range(3)]
    page1 = client.get("/v1/fine_tuning/jobs?limit=2", headers=as_a).json()
    page2 = client.get(f"/v1/fine_tuning/jobs?limit=2&after={page1['data'][-1]['id']}",
                       headers=as_a).json()
    got = [j["id"] for j in page1["data"] + page2["data"]]
    assert sorted(got) == sorted(ids) and page1["has_more"] and not page2["has_more"]


def test_other_organization_cannot_see_or_touch_jobs(client, as_a, as_b):
    file_id = upload(client, as_a).json()["id"]
    job_id = create_job(client, as_a, file_id).json()["id"]
    assert client.get("/v1/fine_tuning/jobs", headers=as_b).json()["data"] == []
    for method, suffix in [("GET", ""), ("GET", "/events"), ("GET", "/checkpoints"),
                           ("POST", "/cancel")]:
        resp = client.request(method, f"/v1/fine_tuning/jobs/{job_id}{suffix}", headers=as_b)
        assert_envelope(resp, 404)
    # B cannot train on A's file either
    assert_envelope(create_job(client, as_b, file_id), 400, param="training_file")
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=as_a).json()["status"] == \
        "validating_files"


def test_fine_tuned_model_is_private_to_its_organization(client, app, as_a, as_b):
    from service.db import JobRow
    from service.ids import now

    file_id = upload(client, as_a).json()["id"]
    job_id = create_job(client, as_a, file_id).json()["id"]
    with app.state.ctx.db.session() as s:  # settle the job as the scheduler would
        row = s.get(JobRow, job_id)
        row.status, row.finished_at, row.trained_tokens = "succeeded", now(), 10
        row.fine_tuned_model = f"ft:tiny-llama:org-a::{row.model_key}"
        name = to_object(row).fine_tuned_model
    assert name in [m["id"] for m in client.get("/v1/models", headers=as_a).json()["data"]]
    assert name not in [m["id"] for m in client.get("/v1/models", headers=as_b).json()["data"]]
    assert client.get(f"/v1/models/{name}", headers=as_a).json()["owned_by"] == "org-a"
    assert_envelope(client.get(f"/v1/models/{name}", headers=as_b), 404, code="model_not_found")
    chat = client.post("/v1/chat/completions", headers=as_b,
                       json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
    assert_envelope(chat, 404, param="model", code="model_not_found")


def test_validation_counts_tokens_and_warns_about_truncation(client, app, as_a):
    lines = chat_jsonl(12).decode().splitlines()
    lines[4] = json.dumps({"messages": [{"role": "user", "content": "word " * 3000},
                                        {"role": "assistant", "content": "ok"}]})
    file_id = upload(client, as_a, ("\n".join(lines) + "\n").encode()).json()["id"]
    job_id = create_job(client, as_a, file_id, hyperparameters={"n_epochs": 2}).json()["id"]
    Scheduler(app.state.ctx).validate(job_id)
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=50", headers=as_a).json()
    warn = [e for e in events["data"] if e["level"] == "warn"]
    assert len(warn) == 1 and "(lines 5)" in warn[0]["message"]
    summary = next(e for e in events["data"] if (e["data"] or {}).get("n_tokens"))
    data = summary["data"]
    assert data["n_examples"] == 12 and data["estimated_trained_tokens"] == 2 * data["n_tokens"]
    # the long example counts at most max_seq_length tokens: it is truncated, not rejected
    assert data["n_tokens"] <= 11 * 100 + data["max_seq_length"]
    assert data["estimated_duration_s"] > 0


def test_bad_validation_file_fails_with_invalid_validation_file(client, app, as_a):
    train_id = upload(client, as_a).json()["id"]
    lines = chat_jsonl(12).decode().splitlines()
    lines[1] = '{"messages": [{"role": "user", "content": "no answer"}]}'
    valid_id = upload(client, as_a, ("\n".join(lines) + "\n").encode()).json()["id"]
    job_id = create_job(client, as_a, train_id, validation_file=valid_id).json()["id"]
    Scheduler(app.state.ctx).validate(job_id)
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=as_a).json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_validation_file"
    assert job["error"]["param"] == "validation_file"
    assert "Line 2" in job["error"]["message"] and valid_id in job["error"]["message"]
