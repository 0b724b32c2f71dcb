"""Webhooks: OpenAI's payload, Standard Webhooks signature, retry with backoff, per org."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from standardwebhooks import Webhook, WebhookVerificationError

from service.main import create_app
from service.webhooks import WebhookSender, enqueue_settled
from tests.service.test_files_and_auth import upload
from tests.service.test_jobs_api import create_job

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class Receiver:
    """A real HTTP endpoint on loopback that fails its first ``fail_first`` requests."""

    def __init__(self, fail_first: int = 0):
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(500 if len(outer.received) <= outer.fail_first else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    with Receiver(fail_first=1) as a, Receiver() as b:
        yield a, b


def test_cancelled_job_is_announced_signed_and_retried(settings, receivers, as_a):
    hook_a, hook_b = receivers
    settings = settings.model_copy(update={
        "webhooks": {"org-a": [hook_a.url], "org-b": [hook_b.url]},
        "webhook_secret": SecretStr(SECRET), "webhook_retry_base_s": 0.2})
    app = create_app(settings, run_scheduler=False)
    with TestClient(app) as client:
        job_id = create_job(client, as_a, upload(client, as_a).json()["id"]).json()["id"]
        client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=as_a)
        db = app.state.ctx.db
        with db.session() as s:
            assert enqueue_settled(s, settings) == 1
        with db.session() as s:
            assert enqueue_settled(s, settings) == 0  # each status is announced once

        sender = WebhookSender(db, settings)

        async def deliver_until_done() -> None:
            deadline = time.monotonic() + 10
            while len(hook_a.received) < 2 and time.monotonic() < deadline:
                await sender.send_due()
                await asyncio.sleep(0.05)
            await sender.aclose()

        asyncio.run(deliver_until_done())

    assert len(hook_a.received) == 2  # one failure (500), one retry that landed
    assert hook_b.received == []      # another organization hears nothing
    (h1, body1), (h2, body2) = hook_a.received
    assert body1 == body2 and h1["webhook-id"] == h2["webhook-id"]
    payload = Webhook(SECRET).verify(body2, h2)
    assert payload["type"] == "fine_tuning.job.cancelled"
    assert payload["data"] == {"id": job_id}
    assert payload["object"] == "event" and payload["id"].startswith("evt_")
    assert isinstance(payload["created_at"], int)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body2.replace(b"cancelled", b"succeeded"), h2)
    assert json.loads(body2) == payload
