"""Every JSON answer of the files, fine-tuning and models APIs, checked against OpenAI's spec.

The requests go through ``SpecClient``, which validates each JSON body it receives (successes
and errors alike) with ``openai_spec.validate_response``: a test here cannot forget to.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.db import CheckpointRow, JobRow
from service.ids import new_id, now
from service.jobs.scheduler import Scheduler
from service.models.naming import checkpoint_name, fine_tuned_model_name
from tests.service.conftest import chat_jsonl
from tests.service.openai_spec import validate_response


class SpecClient:
    """The TestClient, acting for one organization, holding each answer to OpenAI's spec."""

    def __init__(self, client, headers: dict[str, str]):
        self.client, self.headers = client, headers

    def call(self, method: str, template: str, status: int = 200, *,
             headers: dict[str, str] | None = None, params: Any = None, json: Any = None,
             data: Any = None, files: Any = None, **path: str) -> httpx.Response:
        resp = self.client.request(method, template.format(**path), params=params, json=json,
                                   data=data, files=files,
                                   headers=self.headers if headers is None else headers)
        assert resp.status_code == status, resp.text
        if resp.headers.get("content-type", "").startswith("application/json"):
            validate_response(method, template, status, resp.json())
        return resp

    def get(self, template: str, status: int = 200, **kw: Any) -> Any:
        return self.call("GET", template, status, **kw).json()

    def post(self, template: str, status: int = 200, **kw: Any) -> Any:
        return self.call("POST", template, status, **kw).json()

    def delete(self, template: str, status: int = 200, **kw: Any) -> Any:
        return self.call("DELETE", template, status, **kw).json()

    def upload(self, body: bytes = b"", purpose: str = "fine-tune", status: int = 200) -> Any:
        return self.post("/v1/files", status, data={"purpose": purpose},
                         files={"file": ("train.jsonl", body or chat_jsonl(), "application/jsonl")})

    def create_job(self, status: int = 200, **body: Any) -> Any:
        return self.post("/v1/fine_tuning/jobs", status, json={"model": "tiny-llama", **body})


@pytest.fixture
def api(client, as_a) -> SpecClient:
    return SpecClient(client, as_a)


FILE = "/v1/files/{file_id}"
JOBS = "/v1/fine_tuning/jobs"
JOB = JOBS + "/{job_id}"
MODEL = "/v1/models/{model}"


def settle_succeeded(app, job_id: str) -> str:
    """Mark a job succeeded with one servable checkpoint, as the scheduler's settle would."""
    with app.state.ctx.db.session() as s:
        row = s.get(JobRow, job_id)
        name = fine_tuned_model_name(row.model, row.organization, row.suffix, row.model_key)
        s.add(CheckpointRow(
            id=new_id("ftckpt"), job_id=job_id, created_at=now(), step_number=12,
            fine_tuned_model_checkpoint=checkpoint_name(name, 12),
            metrics={"step": 12, "train_loss": 0.5, "train_mean_token_accuracy": 0.8},
            adapter_key=row.model_key,
        ))
        row.status, row.finished_at, row.trained_tokens = "succeeded", now(), 1200
        row.fine_tuned_model = name
    return name


def test_files_round_trip(api):
    body = chat_jsonl(12)
    first = api.upload(body)
    assert (first["object"], first["purpose"], first["bytes"]) == ("file", "fine-tune", len(body))
    ids = [first["id"]] + [api.upload()["id"] for _ in range(2)]

    assert {f["id"] for f in api.get("/v1/files")["data"]} == set(ids)
    assert api.get("/v1/files", params={"purpose": "batch"})["data"] == []
    page1 = api.get("/v1/files", params={"limit": 2, "order": "asc"})
    assert page1["has_more"] and [page1["first_id"], page1["last_id"]] == [
        f["id"] for f in page1["data"]]
    page2 = api.get("/v1/files", params={"limit": 2, "order": "asc",
                                         "after": page1["last_id"]})
    assert not page2["has_more"]
    assert sorted(f["id"] for f in page1["data"] + page2["data"]) == sorted(ids)

    assert api.get(FILE, file_id=first["id"]) == first
    content = api.call("GET", FILE + "/content", file_id=first["id"])
    assert content.content == body

    assert api.delete(FILE, file_id=first["id"]) == {"id": first["id"], "object": "file",
                                                     "deleted": True}
    api.get(FILE, 404, file_id=first["id"])
    api.delete(FILE, 404, file_id=first["id"])


def test_job_through_validation_pagination_events_pause_and_cancel(api, app):
    file_id = api.upload()["id"]
    wandb = {"type": "wandb", "wandb": {"project": "openft", "tags": ["conformance"]}}
    job = api.create_job(
        training_file=file_id, suffix="conf-test", metadata={"team": "eval"}, seed=42,
        method={"type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto"}}},
        integrations=[wandb],
    )
    assert (job["status"], job["seed"], job["metadata"]) == ("validating_files", 42,
                                                             {"team": "eval"})
    assert job["integrations"] == [wandb]

    Scheduler(app.state.ctx).validate(job["id"])
    queued = api.get(JOB, job_id=job["id"])
    assert queued["status"] == "queued" and queued["hyperparameters"]["n_epochs"] == 2
    assert queued["method"]["type"] == "supervised"

    # the legacy top-level hyperparameters still work
    later = [api.create_job(training_file=file_id, hyperparameters={"n_epochs": 1})["id"]
             for _ in range(2)]
    page1 = api.get(JOBS, params={"limit": 2})
    page2 = api.get(JOBS, params={"limit": 2, "after": page1["data"][-1]["id"]})
    assert page1["has_more"] and not page2["has_more"]
    assert {j["id"] for j in page1["data"] + page2["data"]} == {job["id"], *later}
    tagged = api.get(JOBS, params={"metadata[team]": "eval"})["data"]
    assert [j["id"] for j in tagged] == [job["id"]]

    events = api.get(JOB + "/events", job_id=job["id"])
    assert events["data"] and not events["has_more"]
    newest = api.get(JOB + "/events", params={"limit": 1}, job_id=job["id"])
    assert newest["has_more"] and newest["data"][0] == events["data"][0]
    older = api.get(JOB + "/events", params={"after": newest["data"][0]["id"]},
                    job_id=job["id"])
    assert older["data"] == events["data"][1:]

    assert api.get(JOB + "/checkpoints", job_id=job["id"])["data"] == []

    # `paused` is outside the spec's status enum: the one allowance in openai_spec._adjust
    assert api.post(JOB + "/pause", job_id=job["id"])["status"] == "paused"
    assert api.post(JOB + "/resume", job_id=job["id"])["status"] == "queued"
    api.post(JOB + "/resume", 400, job_id=job["id"])

    cancelled = api.post(JOB + "/cancel", job_id=job["id"])
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    err = api.post(JOB + "/cancel", 400, job_id=job["id"])["error"]
    assert err["param"] == "fine_tuning_job_id"


def test_failed_job_reports_its_error_object(api, app):
    file_id = api.upload(b"{not json\n")["id"]
    job_id = api.create_job(training_file=file_id)["id"]
    Scheduler(app.state.ctx).validate(job_id)
    failed = api.get(JOB, job_id=job_id)
    assert failed["status"] == "failed" and failed["error"]["param"] == "training_file"


def test_models_and_checkpoints_of_a_succeeded_job(api, app, client, as_b):
    base = api.get("/v1/models")["data"]
    assert [m["id"] for m in base] == ["tiny-llama"]
    assert api.get(MODEL, model="tiny-llama")["object"] == "model"

    job_id = api.create_job(training_file=api.upload()["id"], suffix="done")["id"]
    name = settle_succeeded(app, job_id)

    job = api.get(JOB, job_id=job_id)
    assert job["status"] == "succeeded" and job["fine_tuned_model"] == name
    ckpts = api.get(JOB + "/checkpoints", job_id=job_id)
    assert ckpts["data"][0]["fine_tuned_model_checkpoint"] == f"{name}:ckpt-step-12"
    assert ckpts["first_id"] == ckpts["last_id"] == ckpts["data"][0]["id"]

    assert name in [m["id"] for m in api.get("/v1/models")["data"]]
    assert api.get(MODEL, model=name)["owned_by"] == "org-a"
    # another organization gets the same 404 as for a model that does not exist
    SpecClient(client, as_b).get(MODEL, 404, model=name)
    api.post(JOB + "/cancel", 400, job_id=job_id)

    assert api.delete(MODEL, model=name) == {"id": name, "object": "model", "deleted": True}
    api.get(MODEL, 404, model=name)
    assert name not in [m["id"] for m in api.get("/v1/models")["data"]]
    api.delete(MODEL, 403, model="tiny-llama")


def test_authentication_errors(api):
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic x"}):
        for method, template in (("GET", "/v1/files"), ("GET", JOBS), ("GET", "/v1/models"),
                                 ("POST", JOBS)):
            resp = api.call(method, template, 401, headers=headers)
            assert resp.json()["error"]["code"] == "invalid_api_key"


def test_not_found_errors(api):
    for template in (FILE, FILE + "/content"):
        assert api.get(template, 404, file_id="file-nope")["error"]["code"] == "not_found"
    for template in (JOB, JOB + "/events", JOB + "/checkpoints"):
        api.get(template, 404, job_id="ftjob-nope")
    api.post(JOB + "/cancel", 404, job_id="ftjob-nope")
    err = api.get(MODEL, 404, model="ft:tiny-llama:org-a::nope")["error"]
    assert (err["code"], err["param"]) == ("model_not_found", "model")


INVALID_JOBS = [
    ({"model": "gpt-9"}, 404, "model"),
    ({"training_file": "file-nope"}, 400, "training_file"),
    ({"training_file": None}, 400, "training_file"),
    ({"suffix": "bad:suffix"}, 400, "suffix"),
    ({"suffix": "x" * 65}, 400, "suffix"),
    ({"seed": -1}, 400, "seed"),
    ({"metadata": {"k": 1}}, 400, "metadata.k"),
    ({"hyperparameters": {"n_epochs": 0}}, 400, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"learning_rate_multiplier": "fast"}}, 400,
     "hyperparameters.learning_rate_multiplier"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 999}}}},
     400, "method.supervised.hyperparameters.batch_size"),
    ({"method": {"type": "reinforcement", "reinforcement": {}}}, 400, "method.type"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"lora_rank": 8}}}},
     400, "method.supervised.hyperparameters.lora_rank"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"lora_r": 64}}}},
     400, "method.supervised.hyperparameters.lora_r"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"zero_stage": 1}}}},
     400, "method.supervised.hyperparameters.zero_stage"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {
        "max_seq_length": 1_000_000}}}}, 400, "method.supervised.hyperparameters.max_seq_length"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}},
     400, "method.dpo.hyperparameters.beta"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"num_workers": 99}}}},
     400, "method.supervised.hyperparameters.num_workers"),
    ({"integrations": [{"type": "mlflow"}]}, 400, "integrations.0.type"),
    ({"integrations": [{"type": "wandb", "wandb": {}}]}, 400, "integrations.0.wandb.project"),
    ({"unknown": 1}, 400, "unknown"),
]


def test_invalid_job_requests_name_the_parameter(api):
    file_id = api.upload()["id"]
    for body, status, param in INVALID_JOBS:
        err = api.create_job(status, **{"training_file": file_id, **body})["error"]
        assert err["param"] == param, (body, err)
    missing = api.post(JOBS, 400, json={"model": "tiny-llama"})["error"]
    assert missing["param"] == "training_file"
    api.call("POST", JOBS, 400, data={"model": "tiny-llama"})  # a form, not JSON


def test_invalid_list_and_upload_requests_name_the_parameter(api):
    assert api.get("/v1/files", 400, params={"limit": 0})["error"]["param"] == "limit"
    assert api.get("/v1/files", 400, params={"order": "up"})["error"]["param"] == "order"
    assert api.get(JOBS, 400, params={"limit": 1001})["error"]["param"] == "limit"
    assert api.upload(purpose="assistants", status=400)["error"]["param"] == "purpose"
    missing = api.post("/v1/files", 400, data={"purpose": "fine-tune"})["error"]
    assert missing["param"] == "file"


def test_nul_in_ids_is_a_400_not_a_server_error(api):
    """PostgreSQL refuses text holding NUL; such ids are refused before they reach it."""
    file_id = api.upload()["id"]
    assert api.get("/v1/files", 400, params={"after": "file-\x00"})["error"]["param"] == "after"
    assert api.get(JOBS, 400, params={"metadata[k]": "\x00"})["error"]["param"] == "metadata[k]"
    api.get(FILE, 400, file_id="file-%00")
    api.get(JOB + "/events", 400, job_id="ftjob-%00")
    api.get(MODEL, 400, model="ft:tiny-llama:org-a::%00")
    err = api.create_job(400, training_file=file_id, validation_file="file-\x00")["error"]
    assert err["param"] == "validation_file"
