"""Base models registered in the bucket: the register command, and the API reading only their
tokenizer and config (real SeaweedFS; no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from contract.base_models import TOKENIZER_FILES, BaseModelConfig
from contract.bucket import spec_key
from service.base_models.__main__ import main
from service.jobs.scheduler import Scheduler
from service.main import build_context, create_app
from service.settings import Settings
from tests.service.conftest import chat_jsonl
from tests.service.fake_ray import FakeRay
from tests.service.test_files_and_auth import upload


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, s3_server, tmp_path: Path) -> None:
    """What an operator's shell holds: the API's OPENFT_S3_* settings."""
    monkeypatch.setenv("OPENFT_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("OPENFT_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("OPENFT_S3_BUCKET", s3_server.bucket)
    monkeypatch.setenv("OPENFT_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("OPENFT_S3_SECRET_KEY", s3_server.secret_key)


def test_register_command_uploads_once_and_says_what_it_did(s3_env, tiny_model_dir, capsys):
    assert main(["register", "--id", "cli-tiny", str(tiny_model_dir)]) == 0
    assert "cli-tiny: registered" in capsys.readouterr().out
    assert main(["register", "--id", "cli-tiny", str(tiny_model_dir)]) == 0
    assert "already registered" in capsys.readouterr().out


def test_register_command_refuses_a_folder_that_is_not_a_model(s3_env, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["register", "--id", "nothing", str(tmp_path / "empty")]) == 1
    assert "no config.json" in capsys.readouterr().err


def _app(settings: Settings, **models: BaseModelConfig):
    return create_app(settings.model_copy(update={
        "base_models": {**settings.base_models, **models}}), run_scheduler=False,
        context=lambda s: build_context(s, ray=FakeRay()))


def _validated_job(client: TestClient, app, headers: dict[str, str], model: str) -> dict:
    file_id = upload(client, headers, chat_jsonl(12)).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", headers=headers,
                      json={"model": model, "training_file": file_id})
    assert job.status_code == 200, job.text
    Scheduler(app.state.ctx).validate(job.json()["id"])
    return client.get(f"/v1/fine_tuning/jobs/{job.json()['id']}", headers=headers).json()


def test_a_job_on_a_bucket_model_counts_tokens_without_the_weights(
        settings, s3_env, tiny_model_dir, as_a):
    assert main(["register", "--id", "bucket-tiny", str(tiny_model_dir)]) == 0
    app = _app(settings, **{"bucket-tiny": BaseModelConfig()})
    with TestClient(app) as client:
        job = _validated_job(client, app, as_a, "bucket-tiny")
        spec = json.loads(app.state.ctx.blobs.get(spec_key(job["id"])))

    assert job["status"] == "queued", job["error"]
    assert spec["base_model_path"] is None  # each node fetches it from the bucket
    fetched = {p.name for p in (settings.api_model_cache_dir / "bucket-tiny").iterdir()}
    assert fetched and fetched <= set(TOKENIZER_FILES)  # the tokenizer and config, no weights


def test_a_job_on_an_unregistered_bucket_model_fails_naming_it(settings, s3_env, as_a):
    app = _app(settings, **{"never-registered": BaseModelConfig()})
    with TestClient(app) as client:
        job = _validated_job(client, app, as_a, "never-registered")

    assert job["status"] == "failed"
    assert job["error"]["code"] == "model_not_available"
    assert job["error"]["param"] == "model"
    assert "never-registered" in job["error"]["message"]
    assert "not registered" in job["error"]["message"]
