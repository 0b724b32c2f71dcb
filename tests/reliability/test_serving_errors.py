"""Serving's errors reach the caller in OpenAI's envelope, with a code.

The API passes serving's answers through; Ray Serve's own errors carry ``code: null``, or the
HTTP status as a number, and a proxy in front may answer with no JSON at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.reliability.conftest import api_app
from tests.service.conftest import KEY_A
from tests.support.http_stub import http_stub

ANSWERS = {
    "null-code": (400, {"error": {"message": "max_tokens is too large", "type": "BadRequest",
                                  "param": "max_tokens", "code": None}}),
    "number-code": (400, {"object": "error", "message": "bad", "type": "BadRequestError",
                          "param": None, "code": 400}),
    "own-code": (404, {"error": {"message": "gone", "type": "invalid_request_error",
                                 "param": "model", "code": "model_not_found"}}),
    "no-envelope": (422, {"detail": [{"loc": ["body", "n"], "msg": "bad"}]}),
}


class Serving(BaseHTTPRequestHandler):
    """Answers each request with the error its ``user`` field names."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, payload = ANSWERS[body["user"]]
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, s3_server,
           tiny_model_dir: Path) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("serving-errors")
    with http_stub(Serving) as serving_url:
        app = api_app(tmp, f"sqlite:///{tmp / 'openft.db'}", s3_server, tiny_model_dir,
                      serving_url=serving_url)
        with TestClient(app) as c:
            yield c


@pytest.mark.parametrize("answer, code, param", [
    ("null-code", "invalid_request", "max_tokens"),
    ("number-code", "invalid_request", None),
    ("own-code", "model_not_found", "model"),
    ("no-envelope", "invalid_value", None),
])
def test_serving_error_gets_a_code(client: TestClient, answer: str, code: str,
                                   param: str | None) -> None:
    resp = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {KEY_A}"},
                       json={"model": "tiny-llama", "user": answer,
                             "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == ANSWERS[answer][0]
    error = resp.json()["error"]
    assert set(resp.json()) == {"error"} and set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"]) == (code, param)
