"""Methods and knobs through the API: DPO jobs, openft's hyperparameters, continued training.

In-process app and scheduler steps, both databases (no Ray: the spec in S3 is what a run
would get).
"""

from __future__ import annotations

import json

from contract.bucket import spec_key
from service.db import JobRow
from service.ids import now
from service.jobs.scheduler import Scheduler
from tests.service.conftest import chat_jsonl
from tests.service.test_files_and_auth import assert_envelope, upload
from tests.service.test_jobs_api import create_job

JOBS = "/v1/fine_tuning/jobs"


def preference_jsonl(n: int = 12) -> bytes:
    lines = [json.dumps({
        "input": {"messages": [{"role": "user", "content": f"Say {i}"}]},
        "preferred_output": [{"role": "assistant", "content": f"{i}"}],
        "non_preferred_output": [{"role": "assistant", "content": "no"}],
    }) for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


def validated(client, app, headers, job_id: str) -> dict:
    Scheduler(app.state.ctx).validate(job_id)
    return client.get(f"{JOBS}/{job_id}", headers=headers).json()


def spec_of(app, job_id: str) -> dict:
    return json.loads(app.state.ctx.blobs.get(spec_key(job_id)))


def test_dpo_job_is_accepted_validated_and_echoes_its_method(client, app, as_a):
    file_id = upload(client, as_a, preference_jsonl()).json()["id"]
    method = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}}
    job = create_job(client, as_a, file_id, method=method).json()
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.2

    job = validated(client, app, as_a, job["id"])

    assert job["status"] == "queued", job
    resolved = job["method"]["dpo"]["hyperparameters"]
    assert resolved["beta"] == 0.2 and resolved["n_epochs"] == 2
    assert job["hyperparameters"]["n_epochs"] == 2
    spec = spec_of(app, job["id"])
    assert spec["method"] == "dpo" and spec["hyperparameters"]["beta"] == 0.2


def test_dpo_job_on_a_chat_file_fails_naming_the_line(client, app, as_a):
    file_id = upload(client, as_a, chat_jsonl(12)).json()["id"]
    job = create_job(client, as_a, file_id, method={"type": "dpo"}).json()

    job = validated(client, app, as_a, job["id"])

    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_training_file"
    assert job["error"]["message"].startswith(f"Training file {file_id} is invalid. Line 1 ")
    assert "'dpo'" in job["error"]["message"]


def test_supervised_knobs_reach_the_training_spec(client, app, as_a):
    file_id = upload(client, as_a, chat_jsonl(12)).json()["id"]
    knobs = dict(lora_r=4, lora_alpha=8, lora_dropout=0.1, lora_target_modules=["q_proj"],
                 lr_scheduler="cosine", warmup_ratio=0.2, max_seq_length=256, packing=False,
                 zero_stage=3, gradient_checkpointing=True, num_workers=1)
    method = {"type": "supervised", "supervised": {"hyperparameters": knobs}}
    job = validated(client, app, as_a, create_job(client, as_a, file_id, method=method)
                    .json()["id"])

    assert job["status"] == "queued", job
    shown = job["method"]["supervised"]["hyperparameters"]
    assert {k: shown[k] for k in knobs} == knobs
    spec = spec_of(app, job["id"])["hyperparameters"]
    assert {k: spec[k] for k in ("lora_r", "lora_alpha", "lora_dropout",
                                 "lora_target_modules")} == {
        "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "lora_target_modules": ["q_proj"]}
    assert (spec["lr_scheduler"], spec["warmup_ratio"], spec["max_seq_length"]) == (
        "cosine", 0.2, 256)
    assert (spec["packing"], spec["zero_stage"], spec["gradient_checkpointing"]) == (
        False, 3, True)
    assert spec["num_workers"] == 1 and spec["batch_size"] % 1 == 0


def test_auto_knobs_are_resolved_in_the_job_after_validation(client, app, as_a):
    file_id = upload(client, as_a, chat_jsonl(12)).json()["id"]
    job = create_job(client, as_a, file_id).json()
    assert job["method"]["supervised"]["hyperparameters"]["lora_r"] == "auto"

    job = validated(client, app, as_a, job["id"])

    resolved = job["method"]["supervised"]["hyperparameters"]
    assert "auto" not in resolved.values(), resolved
    assert resolved["lora_r"] == 8 and resolved["packing"] is True  # 12 examples: rank 8


def succeed(app, job_id: str) -> tuple[str, str]:
    """Settle a job as the scheduler would after a run; returns its fine-tuned model."""
    with app.state.ctx.db.session() as s:
        row = s.get(JobRow, job_id)
        row.status, row.finished_at, row.trained_tokens = "succeeded", now(), 10
        row.fine_tuned_model = f"ft:tiny-llama:{row.organization}::{row.model_key}"
        return row.fine_tuned_model, row.model_key


def test_continued_training_starts_from_the_fine_tuned_adapter(client, app, as_a, as_b):
    file_id = upload(client, as_a, chat_jsonl(12)).json()["id"]
    first = validated(client, app, as_a, create_job(client, as_a, file_id).json()["id"])
    model, model_key = succeed(app, first["id"])

    job = create_job(client, as_a, file_id, model=model, suffix="more").json()
    assert job["model"] == model
    job = validated(client, app, as_a, job["id"])

    assert job["status"] == "queued", job
    spec = spec_of(app, job["id"])
    assert spec["base_model_id"] == "tiny-llama"
    assert spec["init_adapter_key"] == f"models/{model_key}/"
    # The new model is named after the base, as at OpenAI.
    with app.state.ctx.db.session() as s:
        assert s.get(JobRow, job["id"]).base == "tiny-llama"
    # Another organization cannot continue from it.
    other = upload(client, as_b, chat_jsonl(12)).json()["id"]
    assert_envelope(create_job(client, as_b, other, model=model), 404, param="model",
                    code="model_not_found")


def test_a_full_finetune_is_listed_but_refused_by_chat_and_continued_training(client, app,
                                                                               as_a):
    file_id = upload(client, as_a, chat_jsonl(12)).json()["id"]
    method = {"type": "supervised", "supervised": {"hyperparameters": {"full_finetune": True}}}
    job = validated(client, app, as_a, create_job(client, as_a, file_id, method=method)
                    .json()["id"])
    assert spec_of(app, job["id"])["hyperparameters"]["full_finetune"] is True
    model, model_key = succeed(app, job["id"])

    assert model in [m["id"] for m in client.get("/v1/models", headers=as_a).json()["data"]]
    chat = client.post("/v1/chat/completions", headers=as_a,
                       json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert_envelope(chat, 400, param="model", code="model_not_servable")
    assert f"models/{model_key}/" in chat.json()["error"]["message"]
    assert_envelope(create_job(client, as_a, file_id, model=model), 400, param="model")


def test_a_line_the_chat_template_cannot_render_fails_validation_naming_it(client, app, as_a):
    lines = chat_jsonl(12).decode().splitlines()
    # Valid OpenAI format, but the tiny model's template concatenates content, and there is
    # none beside tool_calls.
    lines[6] = json.dumps({"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    ]})
    file_id = upload(client, as_a, ("\n".join(lines) + "\n").encode()).json()["id"]

    job = validated(client, app, as_a, create_job(client, as_a, file_id).json()["id"])

    assert job["status"] == "failed", job
    assert job["error"]["code"] == "invalid_training_file"
    assert "Line 7 cannot be rendered by the chat template of tiny-llama" in \
        job["error"]["message"]
