"""A write is committed before its response leaves, so the client's next request sees it.

Regression: the request's session used to commit after the response was sent; a client that
created a job and read it back at once could get a 404 (seen under load in CI).
"""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from service.db import JobRow
from tests.service.test_files_and_auth import upload


def test_job_row_is_committed_when_its_response_body_is_sent(app, as_a):
    visible_at_send: list[bool] = []

    async def probe(scope, receive, send):
        async def checking_send(message):
            if (scope["type"] == "http" and scope["method"] == "POST"
                    and scope["path"] == "/v1/fine_tuning/jobs"
                    and message["type"] == "http.response.body" and message.get("body")):
                job_id = json.loads(message["body"])["id"]
                with app.state.ctx.db.session() as other:  # another connection
                    visible_at_send.append(other.get(JobRow, job_id) is not None)
            await send(message)

        await app(scope, receive, checking_send)

    with TestClient(probe) as client:
        file_id = upload(client, as_a).json()["id"]
        created = client.post("/v1/fine_tuning/jobs", headers=as_a,
                              json={"model": "tiny-llama", "training_file": file_id})
        assert created.status_code == 200
    assert visible_at_send == [True]
