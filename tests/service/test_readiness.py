"""``GET /readyz``: ready while the database, the bucket and Ray answer; otherwise a 503
naming what is down, within seconds, without a key and without a secret in the body."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from devstack.processes import free_port
from service.auth import KeyRing, parse_api_keys
from service.context import AppContext
from service.db import Database
from service.main import create_app
from service.readiness import run_checks
from service.settings import Settings
from service.storage import BlobStore
from tests.service.fake_ray import FakeRay


def test_ready_when_everything_answers_and_no_key_is_needed(client: TestClient) -> None:
    r = client.get("/readyz")

    assert r.status_code == 200
    assert r.json() == {"status": "ready",
                        "checks": {"database": "ok", "s3": "ok", "ray": "ok"}}


def _down_context(settings: Settings) -> AppContext:
    """Nothing listens behind any of them."""
    return AppContext(
        settings=settings, db=Database(settings.resolved_database_url),
        blobs=BlobStore(settings.resolved_s3_endpoint_url, "openft", "ak", "s3-secret-value"),
        keys=KeyRing(parse_api_keys("sk-r=org-r")), ray=FakeRay(unreachable=True),
        serving=httpx.AsyncClient(), started_at=0)


def test_not_ready_names_each_thing_down_in_the_error_envelope(tmp_path: Path) -> None:
    db_port, s3_port = free_port(), free_port()
    settings = Settings(
        data_dir=tmp_path, api_keys="sk-r=org-r",
        database_url=f"postgresql+psycopg2://openft:db-password-value@127.0.0.1:{db_port}/x",
        s3_endpoint_url=f"http://127.0.0.1:{s3_port}", s3_access_key="ak",
        s3_secret_key="s3-secret-value", ray_auth_token="ray-token-value")
    app = create_app(settings, run_scheduler=False, context=_down_context)

    with TestClient(app) as client:
        started = time.monotonic()
        r = client.get("/readyz")
        took = time.monotonic() - started

    assert r.status_code == 503
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("server_error", "not_ready", None)
    for name in ("database is down", "s3 is down", "ray is down"):
        assert name in error["message"]
    for secret in ("db-password-value", "s3-secret-value", "ray-token-value"):
        assert secret not in r.text
    assert took < 5


def test_only_what_is_down_is_named(settings: Settings) -> None:
    from service.main import build_context

    app = create_app(settings, run_scheduler=False,
                     context=lambda s: build_context(s, ray=FakeRay(unreachable=True)))
    with TestClient(app) as client:
        r = client.get("/readyz")

    assert r.status_code == 503
    message = r.json()["error"]["message"]
    assert "ray is down" in message
    assert "database" not in message and "s3" not in message


def test_a_check_that_hangs_is_cut_off_and_the_others_still_answer() -> None:
    def hangs() -> None:
        time.sleep(3)

    def fails() -> None:
        raise ConnectionError("refused, password=hunter2\nsecond line")

    async def timed() -> tuple[dict[str, str], float]:
        started = time.monotonic()
        results = await run_checks({"slow": hangs, "bad": fails, "good": lambda: None},
                                   secrets=["hunter2"], timeout=0.5)
        return results, time.monotonic() - started

    results, took = asyncio.run(timed())  # (leaving waits for the hung thread to end)

    assert took < 2
    assert results == {"slow": "no answer within 0.5 s",
                       "bad": "ConnectionError: refused, password=***", "good": "ok"}
