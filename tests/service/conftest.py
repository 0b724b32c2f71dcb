"""An API app on real SeaweedFS and SQLite, with two organizations and no Ray behind it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from devstack.databases import database_for
from service.main import build_context, create_app
from service.settings import Settings
from tests.service.fake_ray import FakeRay

KEY_A, KEY_B = "sk-test-a", "sk-test-b"
ORG_A, ORG_B = "org-a", "org-b"


def chat_line(i: int) -> str:
    import json

    return json.dumps({"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": f"What is {i} plus one?"},
        {"role": "assistant", "content": f"{i + 1}"},
    ]})


def chat_jsonl(n: int = 12) -> bytes:
    return ("\n".join(chat_line(i) for i in range(n)) + "\n").encode()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every API test runs on both databases; PostgreSQL gets a fresh database per test."""
    with database_for(request.param, tmp_path) as url:
        yield url


def api_settings(tmp_path: Path, tiny_model_dir: Path, database_url: str, s3_server=None,
                 **overrides) -> Settings:
    """The API's settings in tests: org-a and org-b, the tiny model, no Ray or serving
    listening (these tests never launch), and ``s3_server``'s bucket when one is given (the
    tests that pass none give the app a bucket of their own)."""
    bucket = {} if s3_server is None else {
        "s3_endpoint_url": s3_server.endpoint_url, "s3_bucket": s3_server.bucket,
        "s3_access_key": s3_server.access_key, "s3_secret_key": s3_server.secret_key}
    return Settings(**{
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "ray_address": "http://127.0.0.1:9",  # nothing listens: these tests never launch
        "serving_url": "http://127.0.0.1:9",
        "api_keys": f"{KEY_A}={ORG_A},{KEY_B}={ORG_B}",
        "default_base_model": False,
        "base_models": {"tiny-llama": tiny_model_dir},
        **bucket, **overrides,
    })


@pytest.fixture
def settings(tmp_path: Path, s3_server, tiny_model_dir: Path, database_url: str) -> Settings:
    return api_settings(tmp_path, tiny_model_dir, database_url, s3_server)


@pytest.fixture
def app(settings: Settings):
    """Ray is a fake reporting one free CPU node: validation sizes runs from the cluster."""
    return create_app(settings, run_scheduler=False,
                      context=lambda s: build_context(s, ray=FakeRay()))


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def as_a() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY_A}"}


@pytest.fixture
def as_b() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY_B}"}


@pytest.fixture
def api_env(tmp_path: Path, s3_server, ray_head, tiny_model_dir: Path) -> dict[str, str]:
    """Environment of a standalone API process on the session's S3 server and Ray head."""
    from tests.support.api_process import api_env_for

    return api_env_for(tmp_path, s3_server, ray_head, tiny_model_dir)
