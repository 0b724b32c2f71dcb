"""``GET /metrics``: what Prometheus scrapes from an API process, against a fake Ray and an
in-memory bucket."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from devstack.databases import database_for
from service.jobs.scheduler import Scheduler
from service.lifecycle import JobStatus
from service.main import build_context, create_app
from service.settings import Settings
from tests.service.conftest import KEY_A, ORG_A, api_settings, chat_jsonl
from tests.service.fake_ray import FakeRay, MemoryBlobs
from tests.service.test_files_and_auth import upload

JOBS = "/v1/fine_tuning/jobs"
AS_A = {"Authorization": f"Bearer {KEY_A}"}


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_for(getattr(request, "param", "sqlite"), tmp_path) as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path, database_url: str) -> Settings:
    return api_settings(tmp_path, tiny_model_dir, database_url)


@pytest.fixture
def ray() -> FakeRay:
    return FakeRay()


def app_on(settings: Settings, ray: FakeRay, run_scheduler: bool = False):
    return create_app(settings, run_scheduler=run_scheduler,
                      context=partial(build_context, blobs=MemoryBlobs(), ray=ray))


@pytest.fixture
def client(settings: Settings, ray: FakeRay) -> Iterator[TestClient]:
    with TestClient(app_on(settings, ray)) as c:
        yield c


def create_job(client: TestClient) -> str:
    file_id = upload(client, AS_A, chat_jsonl(12)).json()["id"]
    resp = client.post(JOBS, headers=AS_A, json={"model": "tiny-llama",
                                                 "training_file": file_id})
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]


def scrape(client: TestClient) -> tuple[str, dict[tuple[str, frozenset], float], dict[str, str]]:
    """The text, every sample by (name, labels), and each family's type."""
    resp = client.get("/metrics")  # no key: Prometheus carries none
    assert resp.status_code == 200
    samples, types = {}, {}
    for family in text_string_to_metric_families(resp.text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return resp.text, samples, types


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_is_prometheus_text_outside_the_api_schema(client: TestClient) -> None:
    resp = client.get("/metrics")

    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]
    _, _, types = scrape(client)
    assert types["openft_http_requests"] == "counter"
    assert types["openft_http_request_duration_seconds"] == "histogram"
    assert types["openft_job_duration_seconds"] == "histogram"
    assert types["openft_scheduler_tick_duration_seconds"] == "histogram"
    assert types["openft_jobs"] == types["openft_queue_length"] == "gauge"


def test_requests_are_counted_by_route_template_never_by_raw_path(client: TestClient) -> None:
    job_id = create_job(client)
    assert client.get(f"{JOBS}/{job_id}", headers=AS_A).status_code == 200
    assert client.get(f"{JOBS}/{job_id}/events", headers=AS_A).status_code == 200
    assert client.get(f"{JOBS}/ftjob-nope", headers=AS_A).status_code == 404
    assert client.get(f"/v1/nothing/{job_id}", headers=AS_A).status_code == 404

    text, samples, _ = scrape(client)

    total = "openft_http_requests_total"
    assert value(samples, total, method="POST", route="/v1/files", status="200") == 1
    assert value(samples, total, method="POST", route=JOBS, status="200") == 1
    one_job = f"{JOBS}/{{job_id}}"
    assert value(samples, total, method="GET", route=one_job, status="200") == 1
    assert value(samples, total, method="GET", route=one_job, status="404") == 1
    assert value(samples, total, method="GET", route=f"{one_job}/events", status="200") == 1
    assert value(samples, total, method="GET", route="unmatched", status="404") == 1
    assert value(samples, "openft_http_request_duration_seconds_count",
                 method="GET", route=one_job) == 2
    assert value(samples, "openft_http_request_duration_seconds_bucket",
                 method="GET", route=one_job, le="+Inf") == 2
    # Neither ids nor organizations reach a label.
    for secret in (job_id, "ftjob-nope", ORG_A, KEY_A):
        assert secret not in text


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_jobs_are_counted_by_status_from_the_database(settings: Settings,
                                                      ray: FakeRay) -> None:
    app = app_on(settings, ray)
    with TestClient(app) as client:
        _, samples, _ = scrape(client)
        assert {value(samples, "openft_jobs", status=s) for s in JobStatus} == {0}

        waiting, cancelled = create_job(client), create_job(client)
        client.post(f"{JOBS}/{cancelled}/cancel", headers=AS_A)
        ray.refuse = True  # validated, queued, and not submitted: it waits to launch
        Scheduler(app.state.ctx, metrics=app.state.metrics.scheduler).tick()
        assert client.get(f"{JOBS}/{waiting}", headers=AS_A).json()["status"] == "queued"

        _, samples, _ = scrape(client)

    counts = {s.value: value(samples, "openft_jobs", status=s.value) for s in JobStatus}
    assert counts == {**{s.value: 0 for s in JobStatus}, "queued": 1, "cancelled": 1}
    assert value(samples, "openft_queue_length") == 1
    # The tick announced the cancelled job: its duration was observed once.
    assert value(samples, "openft_job_duration_seconds_count", status="cancelled") == 1
    assert value(samples, "openft_job_duration_seconds_count", status="succeeded") == 0


def test_the_running_scheduler_reports_its_ticks_and_settled_jobs(settings: Settings,
                                                                  ray: FakeRay) -> None:
    settings = settings.model_copy(update={"scheduler_interval_s": 0.05})
    with TestClient(app_on(settings, ray, run_scheduler=True)) as client:
        job_id = create_job(client)
        client.post(f"{JOBS}/{job_id}/cancel", headers=AS_A)
        deadline = time.monotonic() + 20
        while True:
            _, samples, _ = scrape(client)
            settled = value(samples, "openft_job_duration_seconds_count", status="cancelled")
            ticks = value(samples, "openft_scheduler_ticks_total")
            if (settled and ticks >= 3) or time.monotonic() > deadline:
                break
            time.sleep(0.05)

    assert settled == 1
    assert ticks >= 3
    assert value(samples, "openft_scheduler_tick_duration_seconds_count") >= 3
    assert value(samples, "openft_scheduler_tick_failures_total") == 0
    assert ("openft_scheduler_tick_lag_seconds", frozenset()) in samples


def test_each_app_counts_its_own_requests(settings: Settings, ray: FakeRay) -> None:
    with TestClient(app_on(settings, ray)) as first, TestClient(app_on(settings, ray)) as second:
        first.get("/healthz")
        first.get("/healthz")
        second.get("/healthz")

        counted = [value(scrape(c)[1], "openft_http_requests_total",
                         method="GET", route="/healthz", status="200") for c in (first, second)]

    assert counted == [2, 1]
