"""Odd input, replayed: every case in ``bad_inputs/*.yaml`` must get its 4xx in OpenAI's
envelope, with the code and param it names, on SQLite and on PostgreSQL; nothing stored
before the replay may be lost or changed by it (``bad_inputs/README.md`` has the format).

One app per database serves the whole module: the cases share the objects made once below
(a file and a job of each organization, a succeeded job with its model).
"""

from __future__ import annotations

import base64
import doctest
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

import service.errors
import service.text
from devstack.databases import database_for
from service.db import JobRow
from service.ids import now
from service.lifecycle import JobStatus
from service.models.naming import fine_tuned_model_name
from tests.reliability.conftest import api_app
from tests.service.conftest import KEY_A, KEY_B, chat_jsonl

CASES_DIR = Path(__file__).parent / "bad_inputs"
MESSAGE_LIMIT = 1025
"""No error message may be longer: what it echoes back of the request is capped."""


def _load_cases() -> list[Any]:
    cases = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        for case in yaml.safe_load(path.read_text()):
            cases.append(pytest.param(case, id=f"{path.stem}:{case['name']}"))
    return cases


@dataclass
class Stack:
    client: TestClient
    objects: dict[str, str]
    """What ``${name}`` stands for in a case: ids made once for the module."""
    before: dict[str, Any]
    """What each organization could read before the replay."""


def _seed(client: TestClient) -> dict[str, str]:
    objects: dict[str, str] = {}
    for org, key in (("", KEY_A), ("_b", KEY_B)):
        auth = {"Authorization": f"Bearer {key}"}
        upload = client.post("/v1/files", headers=auth, data={"purpose": "fine-tune"},
                             files={"file": ("train.jsonl", chat_jsonl(), "application/jsonl")})
        objects[f"file{org}"] = upload.raise_for_status().json()["id"]
        job = client.post("/v1/fine_tuning/jobs", headers=auth, json={
            "model": "tiny-llama", "training_file": objects[f"file{org}"], "suffix": "seed",
            "metadata": {"purpose": "replay"}})
        objects[f"job{org}"] = job.raise_for_status().json()["id"]
    return objects


def _succeed(app, job_id: str) -> str:
    """Mark a job succeeded, as the scheduler would once its run ends: its model exists."""
    with app.state.ctx.db.session() as s:
        row = s.get(JobRow, job_id)
        row.fine_tuned_model = fine_tuned_model_name(row.model, row.organization, row.suffix,
                                                     row.model_key)
        row.status, row.finished_at, row.trained_tokens = JobStatus.SUCCEEDED, now(), 1200
        return row.fine_tuned_model


def _snapshot(client: TestClient) -> dict[str, Any]:
    """Everything each organization can list and read, as the SDK would see it."""
    seen: dict[str, Any] = {}
    for key in (KEY_A, KEY_B):
        auth = {"Authorization": f"Bearer {key}"}
        for path in ("/v1/files", "/v1/fine_tuning/jobs", "/v1/models"):
            resp = client.get(path, headers=auth, params={"limit": 100} if "jobs" in path else None)
            assert resp.status_code == 200, resp.text
            seen[f"{key} {path}"] = resp.json()
    return seen


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, s3_server,
          tiny_model_dir: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp(f"bad-inputs-{request.param}")
    with database_for(request.param, tmp) as url:
        app = api_app(tmp, url, s3_server, tiny_model_dir)
        with TestClient(app, raise_server_exceptions=False) as client:
            objects = _seed(client)
            objects["model_b"] = _succeed(app, objects["job_b"])
            yield Stack(client, objects, _snapshot(client))


_PLACEHOLDER = re.compile(r"\$\{(?:repeat:(\d+):(.*?)|(\w+))\}", re.S)


def _expand(text: str, objects: dict[str, str]) -> str:
    """``${job}`` -> a seeded id; ``${repeat:3:ab}`` -> ``ababab``."""
    def one(m: re.Match[str]) -> str:
        count, unit, name = m.groups()
        return unit * int(count) if count else objects[name]

    return _PLACEHOLDER.sub(one, text)


def _fill(value: Any, objects: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _expand(value, objects)
    if isinstance(value, list):
        return [_fill(v, objects) for v in value]
    if isinstance(value, dict):
        return {_fill(k, objects): _fill(v, objects) for k, v in value.items()}
    return value


def _request(case: dict[str, Any], objects: dict[str, str]) -> dict[str, Any]:
    headers = case.get("headers", {"Authorization": f"Bearer {KEY_A}"})
    if isinstance(headers, dict):
        headers = list(headers.items())
    headers = [(k, _expand(v, objects)) for k, v in headers]
    content = None
    if "json" in case:
        content = json.dumps(_fill(case["json"], objects)).encode()
    elif "raw" in case:
        content = _expand(case["raw"], objects).encode()
    elif "raw_base64" in case:
        content = base64.b64decode(case["raw_base64"])
    if content is not None and not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("Content-Type", "application/json"))
    return {"method": case["method"], "url": _expand(case["path"], objects),
            "headers": headers, "content": content}


@pytest.mark.parametrize("case", _load_cases())
def test_bad_input_gets_its_4xx(stack: Stack, case: dict[str, Any]) -> None:
    resp = stack.client.request(**_request(case, stack.objects))
    want = case["expect"]
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.text[:300]
    body = resp.json()
    assert resp.status_code == want["status"], json.dumps(body)[:600]
    error = body["error"]
    assert set(body) == {"error"} and set(error) == {"message", "type", "param", "code"}
    assert error["code"] == want["code"], error
    assert error["param"] == _fill(want.get("param"), stack.objects), error
    assert len(error["message"]) <= MESSAGE_LIMIT, error["message"][:300]


def test_nothing_stored_was_lost_or_changed(stack: Stack) -> None:
    """Runs after the replay (pytest keeps the module's order): the same objects, intact."""
    assert _snapshot(stack.client) == stack.before


@pytest.mark.parametrize("module", [service.errors, service.text])
def test_the_examples_in_the_docstrings_hold(module) -> None:
    assert doctest.testmod(module).failed == 0
