"""Outages of the real parts under an API process of its own (issue 16): PostgreSQL stopped
and started again, the S3 server stopped and started again. While a part is away, every
answer is an enveloped error with a code (never a plain-text 500, never a wrong 200); once it
is back, everything acknowledged before is there and the API serves again without a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.processes import free_port, served_by, start, start_seaweedfs, wait_until
from tests.conftest import S3_ACCESS_KEY, S3_BUCKET, S3_SECRET_KEY
from tests.service.conftest import chat_jsonl
from tests.support.private_postgres import PrivatePostgres, private_postgres

KEY = "sk-outage"


class Stack:
    """The API with a PostgreSQL and a SeaweedFS of its own, each stoppable."""

    def __init__(self, root: Path, pg: PrivatePostgres, tiny_model_dir: Path):
        self.root, self.pg = root, pg
        self.s3_port = free_port()
        self.s3 = self._start_s3()
        port = free_port()
        env = dict(
            os.environ, OPENFT_DATA_DIR=str(root / "data"), OPENFT_PORT=str(port),
            OPENFT_DATABASE_URL=pg.url, OPENFT_S3_ENDPOINT_URL=self.s3_url,
            OPENFT_S3_BUCKET=S3_BUCKET, OPENFT_S3_ACCESS_KEY=S3_ACCESS_KEY,
            OPENFT_S3_SECRET_KEY=S3_SECRET_KEY, OPENFT_RAY_ADDRESS="http://127.0.0.1:9",
            OPENFT_SERVING_URL="http://127.0.0.1:9", OPENFT_API_KEYS=f"{KEY}=org-o",
            OPENFT_DEFAULT_BASE_MODEL="false", OPENFT_SCHEDULER_INTERVAL_S="0.5",
            OPENFT_BASE_MODELS=json.dumps({"tiny-llama": str(tiny_model_dir)}),
            OPENFT_DB_POOL_TIMEOUT_S="3")
        self.api = start("api", [sys.executable, "-m", "uvicorn", "--factory",
                                 "service.main:create_app", "--host", "127.0.0.1",
                                 "--port", str(port)], root, env)
        wait_until(lambda: served_by(f"http://127.0.0.1:{port}/healthz", self.api.pid),
                   "the API", self.api, 60)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=30,
                                 headers={"Authorization": f"Bearer {KEY}"})

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def _start_s3(self):
        return start_seaweedfs(self.root / "s3", self.s3_port, S3_BUCKET, S3_ACCESS_KEY,
                               S3_SECRET_KEY, self.root)

    def stop_s3(self) -> None:
        self.s3.stop()

    def start_s3(self) -> None:
        self.s3 = self._start_s3()  # the same data directory and port

    def upload(self, name: str, body: bytes) -> httpx.Response:
        return self.http.post("/files", data={"purpose": "fine-tune"},
                              files={"file": (name, body, "application/jsonl")})

    def close(self) -> None:
        self.http.close()
        self.api.stop()
        self.s3.stop()


@pytest.fixture
def stack(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Stack]:
    root = Path("/tmp") / f"outage-{os.getpid()}-{tmp_path.name[-12:]}"
    with private_postgres(root / "pg") as pg:
        s = Stack(root, pg, tiny_model_dir)
        try:
            yield s
        finally:
            s.close()
    shutil.rmtree(root, ignore_errors=True)


def assert_enveloped(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and error["message"], error


def test_postgresql_restarted_loses_nothing_and_answers_503_meanwhile(stack: Stack) -> None:
    files = [stack.upload(f"t{i}.jsonl", chat_jsonl(12 + i)).json() for i in range(3)]
    job = stack.http.post("/fine_tuning/jobs", json={"model": "tiny-llama",
                                                     "training_file": files[0]["id"]}).json()

    stack.pg.stop()
    for call in (lambda: stack.http.get("/files"),
                 lambda: stack.http.get(f"/fine_tuning/jobs/{job['id']}"),
                 lambda: stack.http.get("/fine_tuning/jobs"),
                 lambda: stack.http.post("/fine_tuning/jobs", json={
                     "model": "tiny-llama", "training_file": files[1]["id"]}),
                 lambda: stack.upload("during.jsonl", chat_jsonl())):
        assert_enveloped(call(), 503, "database_unavailable")

    stack.pg.start()
    # Pooled connections the restart cut are checked before use: the first request works.
    listed = stack.http.get("/files", params={"order": "asc"})
    assert listed.status_code == 200, listed.text
    assert [f["id"] for f in listed.json()["data"]] == [f["id"] for f in files]
    assert stack.http.get(f"/fine_tuning/jobs/{job['id']}").json()["id"] == job["id"]
    assert [j["id"] for j in stack.http.get("/fine_tuning/jobs").json()["data"]] == [job["id"]]
    for i, f in enumerate(files):
        assert stack.http.get(f"/files/{f['id']}/content").content == chat_jsonl(12 + i)


def test_s3_stopped_and_restarted_loses_nothing_and_answers_503_meanwhile(stack: Stack) -> None:
    files = [stack.upload(f"t{i}.jsonl", chat_jsonl(12 + i)).json() for i in range(3)]

    stack.stop_s3()
    assert_enveloped(stack.upload("during.jsonl", chat_jsonl()), 503, "service_unavailable")
    assert_enveloped(stack.http.get(f"/files/{files[0]['id']}/content"), 503,
                     "service_unavailable")
    # What the database alone answers still works; nothing half-made is listed.
    listed = stack.http.get("/files", params={"order": "asc"})
    assert [f["id"] for f in listed.json()["data"]] == [f["id"] for f in files]
    job = stack.http.post("/fine_tuning/jobs", json={"model": "tiny-llama",
                                                     "training_file": files[0]["id"]})
    assert job.status_code == 200 and job.json()["status"] == "validating_files", job.text

    stack.start_s3()
    for i, f in enumerate(files):
        assert stack.http.get(f"/files/{f['id']}/content").content == chat_jsonl(12 + i)
    assert stack.upload("after.jsonl", chat_jsonl()).status_code == 200
