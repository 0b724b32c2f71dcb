"""An openft server stand-in for the CLI's tests: routes answered from a table, requests kept.

It speaks the documented shapes (docs/api.md and the live events, report and download
extensions) over real HTTP on loopback, so the CLI's own SDK and httpx requests are what is
tested. A stream can drop mid-way: chunked transfer cut off without its last chunk, as a
connection lost under a proxy looks to the client.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.service.conftest import chat_jsonl
from tests.support.http_stub import http_stub


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    json_body: Any = None
    chunks: Iterable[bytes] = ()
    """Sent with chunked transfer encoding when ``json_body`` is None."""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    """Cut the connection after ``chunks`` instead of ending the body."""


Route = Callable[[Request], Reply]


def error(status: int, message: str, code: str) -> Reply:
    return Reply(status, {"error": {"message": message, "type": "invalid_request_error",
                                    "param": None, "code": code}})


def sse(*messages: tuple[str, str, Any]) -> list[bytes]:
    """SSE messages ``(id, event, data)`` as the server frames them, one chunk each."""
    return [f"id: {i}\nevent: {e}\ndata: {json.dumps(d)}\n\n".encode() for i, e, d in messages]


class Stub:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[Request] = []

    def route(self, method: str, path: str, reply: Route | Reply | dict[str, Any]) -> None:
        if isinstance(reply, dict):
            reply = Reply(json_body=reply)
        self.routes[(method, path)] = reply if callable(reply) else (lambda _r, a=reply: a)

    def seen(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if (r.method, r.path) == (method, path)]

    def handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                request = Request(self.command, url.path, parse_qs(url.query),
                                  {k.lower(): v for k, v in self.headers.items()}, body)
                stub.requests.append(request)
                route = stub.routes.get((self.command, url.path))
                reply = route(request) if route else error(404, f"no route {url.path}",
                                                           "not_found")
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.json_body is not None:
                    data = json.dumps(reply.json_body).encode()
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for chunk in reply.chunks:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                if reply.drop:
                    self.close_connection = True
                    return
                self.wfile.write(b"0\r\n\r\n")

            do_GET = do_POST = do_DELETE = _serve

        return Handler


@contextmanager
def serving(stub: Stub) -> Iterator[str]:
    """The stub on a free loopback port; yields its API root (``.../v1``)."""
    with http_stub(stub.handler()) as url:
        yield url + "/v1"


# -- objects in the API's shapes --------------------------------------------------------------

def file_object(file_id: str, filename: str = "train.jsonl", size: int = 100) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": 1_700_000_000,
            "filename": filename, "purpose": "fine-tune", "status": "processed"}


def job_object(job_id: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "object": "fine_tuning.job", "created_at": 1_700_000_000,
            "model": "tiny-llama", "organization_id": "org-a", "status": status,
            "training_file": "file-train", "validation_file": None, "result_files": [],
            "hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1},
            "fine_tuned_model": None, "finished_at": None, "trained_tokens": None,
            "error": None, "seed": 1, **extra}


def event_object(n: int, message: str, *, metrics: dict[str, Any] | None = None,
                 at: int = 1_700_000_000, level: str = "info") -> dict[str, Any]:
    return {"id": f"ftevent-{n}", "object": "fine_tuning.job.event", "created_at": at,
            "level": level, "message": message, "type": "metrics" if metrics else "message",
            "data": metrics}


EMAIL = "jane.doe@example.com"


def flagged_jsonl(n: int = 12) -> bytes:
    """``chat_jsonl(n)`` with what the data report flags: an email on line 4, line 1 again as
    line ``n + 1``."""
    rows = chat_jsonl(n).decode().splitlines()
    rows[3] = rows[3].replace("plus one?", f"plus one? Mail {EMAIL}")
    return ("\n".join([*rows, rows[0]]) + "\n").encode()


REPORT: dict[str, Any] = {
    "object": "file.report", "file_id": "file-train", "model": "tiny-llama",
    "max_seq_length": 1024, "rows": 120,
    "tokens": {"trained": 5123, "untrained": 7045, "total": 12168},
    "per_row": [{"line": 1, "trained": 40, "untrained": 60, "total": 100}],
    "per_row_truncated": False,
    "lengths": {"min": 30, "mean": 100.5, "p50": 95, "p90": 180, "p99": 300, "max": 1410,
                "histogram": [{"up_to": 128, "rows": 80}, {"up_to": 2048, "rows": 40}]},
    "truncation": {"rows": 2, "lines": [17, 88]},
    "loss_preview": [{"line": 1, "segments": [{"text": "<|user|>Hi", "trained": False},
                                              {"text": "Hello there!", "trained": True}]}],
    "duplicates": {"exact": [{"lines": [3, 41]}], "near": [{"lines": [5, 9], "similarity": 0.91}]},
    "validation": {"file_id": "file-valid", "rows": 20,
                   "leaked": [{"line": 4, "training_lines": [12], "kind": "exact"}]},
    "findings": [{"line": 57, "kind": "email", "excerpt": "j***@example.com"},
                 {"line": 63, "kind": "api_key", "excerpt": "sk-A***"}],
    "estimate": {"basis": "measured", "jobs_measured": 3, "tokens_per_second": 812.5,
                 "epochs": 3, "tokens": 36504, "seconds": 4493.0, "gpus": 1,
                 "gpu_hours": 1.248, "worker_hours": 1.248},
}
