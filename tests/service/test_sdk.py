"""Every files / fine_tuning.jobs / models method of the official ``openai`` SDK, in process.

The SDK runs over the FastAPI TestClient (an ``httpx.Client``), so this is the SDK's own
request building and response parsing against the real app, without Ray or vLLM.
"""

from __future__ import annotations

import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from service.jobs.scheduler import Scheduler
from tests.service.conftest import KEY_A, chat_jsonl
from tests.service.test_jobs_lifecycle import settle_succeeded


@pytest.fixture
def sdk(client) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key=KEY_A, http_client=client,
                  max_retries=0)


def test_files_methods(sdk: OpenAI):
    created = sdk.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune")
    assert sdk.files.retrieve(created.id).filename == "t.jsonl"
    assert sdk.files.content(created.id).content == chat_jsonl()
    assert [f.id for f in sdk.files.list(purpose="fine-tune")] == [created.id]
    assert sdk.files.delete(created.id).deleted is True
    with pytest.raises(NotFoundError):
        sdk.files.retrieve(created.id)
    with pytest.raises(BadRequestError) as e:
        sdk.files.create(file=("t.jsonl", chat_jsonl()), purpose="batch")
    assert e.value.body["param"] == "purpose"


def test_files_auto_pagination(sdk: OpenAI):
    ids = {sdk.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
           for _ in range(5)}
    first = sdk.files.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    assert {f.id for f in first} == ids  # iterating follows `after` across pages


def test_jobs_methods(sdk: OpenAI, app):
    file_id = sdk.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    jobs = [sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id,
                                        suffix="s", metadata={"n": str(i)}) for i in range(3)]
    assert sdk.fine_tuning.jobs.retrieve(jobs[0].id).metadata == {"n": "0"}
    page = sdk.fine_tuning.jobs.list(limit=2)
    assert page.has_more and {j.id for j in page} == {j.id for j in jobs}
    assert [j.id for j in sdk.fine_tuning.jobs.list(metadata={"n": "1"})] == [jobs[1].id]

    job = jobs[0]
    Scheduler(app.state.ctx).validate(job.id)
    assert sdk.fine_tuning.jobs.pause(job.id).status == "paused"
    assert sdk.fine_tuning.jobs.resume(job.id).status == "queued"
    events = sdk.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(events.data) == 2 and events.has_more
    assert len(list(events)) >= 5  # auto-pagination over the events
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(BadRequestError):
        sdk.fine_tuning.jobs.cancel(job.id)

    name = settle_succeeded(app, jobs[1].id)
    assert sdk.fine_tuning.jobs.checkpoints.list(jobs[1].id).data == []
    assert name in [m.id for m in sdk.models.list()]
    assert sdk.models.retrieve(name).owned_by == "org-a"
    assert sdk.models.delete(name).deleted is True
    with pytest.raises(NotFoundError):
        sdk.models.retrieve(name)
