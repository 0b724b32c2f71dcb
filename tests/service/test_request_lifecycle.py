"""A request's database work under concurrency (issue 16, defects 1 and 10): many more
clients than connections all get answers, and jobs list newest first even when they were
created within one second."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import anyio
import httpx

from service.main import build_context, create_app
from service.settings import Settings
from tests.service.conftest import chat_jsonl
from tests.service.fake_ray import FakeRay
from tests.service.test_files_and_auth import upload
from tests.service.test_jobs_api import create_job

JOBS = "/v1/fine_tuning/jobs"


def test_a_hundred_clients_on_four_connections_all_get_answers(settings: Settings,
                                                               as_a: dict[str, str]) -> None:
    # Fewer connections than request threads: before the fix, a route kept its connection
    # until its answer was serialized on another pool thread, which the routes waiting for
    # a connection held: every request then hung until the pool timeout.
    tight = settings.model_copy(update={"db_pool_size": 4, "db_max_overflow": 0,
                                        "db_pool_timeout_s": 5.0, "request_threads": 8})
    app = create_app(tight, run_scheduler=False,
                     context=lambda s: build_context(s, ray=FakeRay()))

    async def hundred_reads() -> tuple[list[int], float]:
        # Also where the app does not set it from request_threads (the code before the fix).
        anyio.to_thread.current_default_thread_limiter().total_tokens = 8
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://openft",
                headers=as_a, timeout=60) as client:
            created = await client.post("/v1/files", data={"purpose": "fine-tune"},
                                        files={"file": ("t.jsonl", chat_jsonl())})
            job = await client.post(JOBS, json={"model": "tiny-llama",
                                                "training_file": created.json()["id"]})
            started = time.monotonic()
            answers = await asyncio.gather(
                *(client.get(f"{JOBS}/{job.json()['id']}") for _ in range(50)),
                *(client.get(JOBS) for _ in range(25)),
                *(client.get("/v1/models") for _ in range(25)))
            return [a.status_code for a in answers], time.monotonic() - started

    statuses, seconds = asyncio.run(hundred_reads())
    assert statuses == [200] * 100
    assert seconds < 5.0, f"answers waited for the pool timeout ({seconds:.1f} s)"


def test_a_hundred_concurrent_writers_all_succeed(settings: Settings,
                                                  as_a: dict[str, str]) -> None:
    """Uploads, job creates and cancels at once (on SQLite, on one file), the scheduler
    writing beside them: every write is answered 200 and kept. Before issue 16 this gave
    SQLite plain-text 500s and "database is locked" (the rollback journal, connections held
    across serialization)."""
    app = create_app(settings, run_scheduler=True,
                     context=lambda s: build_context(s, ray=FakeRay()))

    async def hundred_writes() -> tuple[list[httpx.Response], list[dict], list[dict]]:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://openft",
                headers=as_a, timeout=120) as client:
            first = await client.post("/v1/files", data={"purpose": "fine-tune"},
                                      files={"file": ("t.jsonl", chat_jsonl())})
            jobs = [await client.post(JOBS, json={"model": "tiny-llama",
                                                  "training_file": first.json()["id"]})
                    for _ in range(20)]

            def upload_one(i: int):
                return client.post("/v1/files", data={"purpose": "fine-tune"},
                                   files={"file": (f"w{i}.jsonl", chat_jsonl(3 + i % 5))})

            answers = await asyncio.gather(
                *(upload_one(i) for i in range(50)),
                *(client.post(JOBS, json={"model": "tiny-llama",
                                          "training_file": first.json()["id"]})
                  for _ in range(30)),
                *(client.post(f"{JOBS}/{j.json()['id']}/cancel") for j in jobs))
            files = (await client.get("/v1/files", params={"limit": 1000})).json()["data"]
            listed = (await client.get(JOBS, params={"limit": 1000})).json()["data"]
            return answers, files, listed

    answers, files, listed = asyncio.run(hundred_writes())
    assert [a.status_code for a in answers] == [200] * 100, [
        (a.status_code, a.text[:200]) for a in answers if a.status_code != 200][:5]
    uploaded = {a.json()["id"] for a in answers[:50]}
    assert uploaded <= {f["id"] for f in files}
    created = {a.json()["id"] for a in answers[50:80]}
    assert created <= {j["id"] for j in listed} and len(listed) == 50
    assert {a.json()["status"] for a in answers[80:]} == {"cancelled"}


def test_jobs_of_one_second_list_newest_first_on_every_page(client, as_a, monkeypatch):
    import service.ids

    # Every job of this test is created in this one second (ahead of any order this
    # process has handed out: the order never goes back).
    frozen = int(time.time()) + 86_400
    monkeypatch.setattr(service.ids, "time", SimpleNamespace(
        time=lambda: float(frozen), time_ns=lambda: frozen * 10**9))
    file_id = upload(client, as_a).json()["id"]
    created = [create_job(client, as_a, file_id).json() for _ in range(6)]
    assert {job["created_at"] for job in created} == {frozen}
    ids = [job["id"] for job in created]

    listed = client.get(f"{JOBS}?limit=6", headers=as_a).json()["data"]
    assert [job["id"] for job in listed] == ids[::-1]
    pages, after = [], None
    while True:
        page = client.get(JOBS, headers=as_a,
                          params={"limit": 2, **({"after": after} if after else {})}).json()
        pages += [job["id"] for job in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert pages == ids[::-1]


def test_files_of_one_second_list_in_upload_order_both_ways(client, as_a, monkeypatch):
    import service.ids

    frozen = int(time.time()) + 2 * 86_400  # ahead of any order handed out before
    monkeypatch.setattr(service.ids, "time", SimpleNamespace(
        time=lambda: float(frozen), time_ns=lambda: frozen * 10**9))
    ids = [upload(client, as_a, name=f"t{i}.jsonl").json()["id"] for i in range(5)]

    newest = client.get("/v1/files", headers=as_a).json()["data"]
    assert [f["id"] for f in newest] == ids[::-1]
    assert {f["created_at"] for f in newest} == {frozen}
    oldest = client.get("/v1/files", headers=as_a, params={"order": "asc", "limit": 2,
                                                            "after": ids[1]}).json()
    assert [f["id"] for f in oldest["data"]] == ids[2:4] and oldest["has_more"]
