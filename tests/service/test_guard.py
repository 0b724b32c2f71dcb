"""The guard answers a wrong key and an oversized body from the headers, before the app
reads a body byte; a body with no declared length is cut off as it passes the limit."""

from __future__ import annotations

import asyncio
import json
import select
import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from service.auth import KeyRing, parse_api_keys
from service.guard import FORM_MARGIN_BYTES, RequestGuard, body_limit
from service.main import build_context, create_app
from service.settings import Settings
from tests.service.conftest import KEY_A
from tests.service.fake_ray import FakeRay
from tests.support.asgi_server import served

LIMIT = 1000  # max_upload_bytes of the unit tests' fake app


class InnerApp:
    """Reads the whole body, then answers 200 with its length; records what it saw."""

    def __init__(self) -> None:
        self.called = False
        self.body = b""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called = True
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionError("client went away")  # as Starlette's ClientDisconnect
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(self.body)).encode()})


def call(path: str, headers: dict[str, str], chunks: list[bytes]
         ) -> tuple[InnerApp, list[dict], int]:
    """Run one request through the guard: (inner app, messages sent, chunks received)."""
    ctx = SimpleNamespace(keys=KeyRing(parse_api_keys("sk-good=org")),
                          settings=SimpleNamespace(max_upload_bytes=LIMIT))
    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "app": SimpleNamespace(state=SimpleNamespace(ctx=ctx))}
    taken = 0

    async def receive() -> dict:
        nonlocal taken
        taken += 1
        if taken > len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[taken - 1],
                "more_body": taken < len(chunks)}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    inner = InnerApp()
    asyncio.run(RequestGuard(inner)(scope, receive, send))
    return inner, sent, taken


def answer_of(sent: list[dict]) -> tuple[int, dict]:
    assert sent[0]["type"] == "http.response.start"
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], json.loads(body)


GOOD = {"Authorization": "Bearer sk-good"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"},
                                     {"Authorization": "Basic x"}])
def test_a_wrong_key_is_refused_before_a_body_byte_is_read(headers):
    inner, sent, taken = call("/v1/files", {**headers, "Content-Length": "999999999"},
                              [b"x" * 100] * 3)

    status, body = answer_of(sent)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert (dict(sent[0]["headers"])[b"www-authenticate"]) == b"Bearer"
    assert taken == 0 and not inner.called


def test_a_declared_length_over_the_limit_is_refused_at_once():
    inner, sent, taken = call("/v1/files", {**GOOD, "Content-Length": str(body_limit(LIMIT) + 1)},
                              [b"x"])

    status, body = answer_of(sent)
    assert status == 413
    assert (body["error"]["code"], body["error"]["param"]) == ("file_too_large", "file")
    assert taken == 0 and not inner.called


def test_an_undeclared_body_is_cut_off_as_it_passes_the_limit():
    chunk = b"x" * 4096
    chunks = [chunk] * (2 * body_limit(LIMIT) // len(chunk))
    inner, sent, taken = call("/v1/files", GOOD, chunks)

    status, body = answer_of(sent)  # only the guard's answer: the app's is dropped
    assert status == 413 and body["error"]["code"] == "file_too_large"
    assert taken * len(chunk) <= body_limit(LIMIT) + len(chunk)  # stopped at the limit
    assert taken < len(chunks)


def test_a_body_within_the_limit_and_margin_passes_untouched():
    chunks = [b"x" * 600, b"y" * (LIMIT + FORM_MARGIN_BYTES - 600)]
    inner, sent, _ = call("/v1/files", GOOD, chunks)

    assert sent[0]["status"] == 200 and inner.body == b"".join(chunks)


def test_routes_outside_v1_need_no_key():
    inner, sent, _ = call("/healthz", {}, [b""])
    assert sent[0]["status"] == 200 and inner.called


# --- through a real server: what the client on the wire sees -----------------------------


@pytest.fixture
def database_url(tmp_path) -> str:
    """SQLite only: the guard answers before any query."""
    return f"sqlite:///{tmp_path / 'openft.db'}"


@pytest.fixture
def server(settings: Settings) -> Iterator[int]:
    """The API under uvicorn on a free port, with a 100 kB upload limit."""
    small = settings.model_copy(update={"max_upload_bytes": 100_000})
    app = create_app(small, run_scheduler=False,
                     context=lambda s: build_context(s, ray=FakeRay()))
    with served(app) as url:
        yield int(url.rsplit(":", 1)[1])


def read_answer(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        more = sock.recv(65536)
        if not more:
            break
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def request_head(headers: dict[str, str]) -> bytes:
    lines = ["POST /v1/files HTTP/1.1", "Host: openft",
             "Content-Type: multipart/form-data; boundary=b"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_an_unauthenticated_200_mb_upload_is_answered_before_its_body_is_sent(server):
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(request_head({"Authorization": "Bearer sk-wrong",
                                   "Content-Length": str(200 * 1024 * 1024)}))
        # Not one body byte is sent: the 401 can only come from the headers.
        status, body = read_answer(sock)

    assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_a_declared_oversized_upload_is_answered_before_its_body_is_sent(server):
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(request_head({"Authorization": f"Bearer {KEY_A}",
                                   "Content-Length": str(200 * 1024 * 1024)}))
        status, body = read_answer(sock)

    assert status == 413 and body["error"]["param"] == "file"


def test_a_chunked_upload_is_cut_off_near_the_limit_not_after_the_whole_body(server):
    total = 64 * 1024 * 1024
    chunk = b"x" * 16384
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(request_head({"Authorization": f"Bearer {KEY_A}",
                                   "Transfer-Encoding": "chunked"}))
        part = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"'
                b"\r\nContent-Type: application/jsonl\r\n\r\n")
        sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        while sent < total:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable or not writable:
                break  # the answer is there (or the server stopped reading)
            try:
                sent += sock.send(frame)
            except OSError:
                break
        status, body = read_answer(sock)

    assert status == 413 and body["error"]["code"] == "file_too_large"
    # Kernel buffers hold a few MB; without the guard every byte would be read first.
    assert sent < total // 2


def test_a_request_is_authenticated_once_by_the_guard(client, as_a, as_b,
                                                      monkeypatch) -> None:
    """The routes take the caller the guard authenticated; each key is hashed and compared
    once a request, and the route still sees the right organization."""
    calls = []
    authenticate = KeyRing.authenticate

    def counted(self, authorization):
        calls.append(authorization)
        return authenticate(self, authorization)

    monkeypatch.setattr(KeyRing, "authenticate", counted)
    mine = client.post("/v1/files", headers=as_a, data={"purpose": "fine-tune"},
                       files={"file": ("t.jsonl", b'{"messages": []}\n')})
    assert mine.status_code == 200 and len(calls) == 1
    assert client.get(f"/v1/files/{mine.json()['id']}", headers=as_b).status_code == 404
    assert len(calls) == 2
