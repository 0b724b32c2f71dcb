"""The Files API when the bucket is down, an object is missing, a commit fails or the input
is odd: always an enveloped answer, never a plain-text 500 or a 200 with no content; and an
``Idempotency-Key`` that makes a retried upload return the first file."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, update

from contract.bucket import file_key
from devstack.processes import free_port
from service.db import FileIdempotencyRow
from service.files.sweeper import sweep
from service.main import build_context, create_app
from service.settings import Settings
from service.storage import BlobStore
from tests.service.conftest import chat_jsonl
from tests.service.fake_ray import FakeRay
from tests.service.test_files_and_auth import assert_envelope, upload


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A bucket of its own: these tests count what lies under ``files/``."""
    return settings.model_copy(update={"s3_bucket": f"files-{uuid.uuid4().hex[:12]}"})


@pytest.fixture
def bucket(settings: Settings, s3_server) -> BlobStore:
    return BlobStore(s3_server.endpoint_url, settings.s3_bucket, s3_server.access_key,
                     s3_server.secret_key)


@pytest.fixture
def s3_down(settings: Settings) -> Iterator[TestClient]:
    """The same database, and a bucket where nothing listens."""
    dead = BlobStore(f"http://127.0.0.1:{free_port()}", settings.s3_bucket, "ak", "sk")
    app = create_app(settings, run_scheduler=False,
                     context=lambda s: build_context(s, blobs=dead, ray=FakeRay()))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def stored(bucket: BlobStore) -> list[str]:
    return bucket.list_keys(file_key(""))


def test_upload_with_s3_down_is_an_enveloped_503_and_lists_nothing(client, s3_down, as_a):
    resp = upload(s3_down, as_a)

    err = assert_envelope(resp, 503, code="service_unavailable")
    assert err["type"] == "server_error"
    assert client.get("/v1/files", headers=as_a).json()["data"] == []


def test_content_with_s3_down_is_an_enveloped_503_not_an_empty_200(client, s3_down, as_a):
    file_id = upload(client, as_a).json()["id"]

    resp = s3_down.get(f"/v1/files/{file_id}/content", headers=as_a)

    assert_envelope(resp, 503, code="service_unavailable")


def test_content_whose_object_is_missing_is_an_enveloped_500(client, bucket, as_a):
    file_id = upload(client, as_a).json()["id"]
    bucket.delete(file_key(file_id))

    resp = client.get(f"/v1/files/{file_id}/content", headers=as_a)

    err = assert_envelope(resp, 500, code="file_content_missing")
    assert err["type"] == "server_error"


def test_an_empty_file_still_has_its_empty_content(client, as_a):
    # a file of zero bytes is refused by the multipart client helper: send one explicitly
    resp = client.post("/v1/files", headers=as_a, data={"purpose": "fine-tune"},
                       files={"file": ("e.jsonl", b"", "application/jsonl")})
    file_id = resp.json()["id"]
    content = client.get(f"/v1/files/{file_id}/content", headers=as_a)
    assert content.status_code == 200 and content.content == b""


def test_delete_with_s3_down_deletes_the_file_and_the_sweeper_takes_its_bytes(
        client, s3_down, bucket, as_a, app, settings):
    file_id = upload(client, as_a).json()["id"]

    resp = s3_down.delete(f"/v1/files/{file_id}", headers=as_a)

    assert resp.json() == {"id": file_id, "object": "file", "deleted": True}
    assert_envelope(client.get(f"/v1/files/{file_id}", headers=as_a), 404)
    assert stored(bucket) == [file_key(file_id)]  # the orphan
    report = sweep(app.state.ctx.db, bucket, settings.files_sweep_grace_s,
                   now=2 * settings.files_sweep_grace_s + 4e9)
    assert report.orphans_deleted == [file_key(file_id)] and stored(bucket) == []


def test_a_delete_whose_commit_fails_leaves_the_file_whole(client, app, as_a):
    body = chat_jsonl(5)
    file_id = upload(client, as_a, body).json()["id"]

    def refuse(conn) -> None:
        raise RuntimeError("the database went away mid-commit")

    engine = app.state.ctx.db.engine
    event.listen(engine, "commit", refuse)
    try:
        with pytest.raises(RuntimeError, match="mid-commit"):
            client.delete(f"/v1/files/{file_id}", headers=as_a)
    finally:
        event.remove(engine, "commit", refuse)

    # Row first: the row is still there, so its bytes must be too.
    assert client.get(f"/v1/files/{file_id}", headers=as_a).status_code == 200
    assert client.get(f"/v1/files/{file_id}/content", headers=as_a).content == body


def test_a_filename_over_512_characters_is_refused_before_anything_is_stored(
        client, bucket, as_a):
    resp = upload(client, as_a, name="n" * 507 + ".json" + "l")

    assert_envelope(resp, 400, param="file", code="invalid_value")
    assert stored(bucket) == []
    assert upload(client, as_a, name="n" * 506 + ".jsonl").status_code == 200  # 512 fits


@pytest.mark.parametrize("name", [b"a\x00b.jsonl", b"a\x1bb.jsonl", b"a\x7fb.jsonl"])
def test_a_filename_with_a_control_character_is_refused(client, bucket, as_a, name):
    body = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + name +
            b'"\r\nContent-Type: application/jsonl\r\n\r\n' + chat_jsonl(2) + b"\r\n--b--\r\n")
    resp = client.post("/v1/files", content=body,
                       headers={**as_a, "Content-Type": "multipart/form-data; boundary=b"})

    assert_envelope(resp, 400, param="file", code="invalid_value")
    assert stored(bucket) == []


def test_a_repeated_idempotency_key_returns_the_first_file(client, bucket, as_a, as_b):
    key = {"Idempotency-Key": "upload-7"}
    first = upload(client, {**as_a, **key}).json()
    again = upload(client, {**as_a, **key}, body=chat_jsonl(3)).json()
    other_org = upload(client, {**as_b, **key}).json()
    other_key = upload(client, {**as_a, "Idempotency-Key": "upload-8"}).json()

    assert again == first
    assert len({first["id"], other_org["id"], other_key["id"]}) == 3
    assert len(stored(bucket)) == 3  # the repeat stored no second copy


def test_an_idempotency_key_expires_after_24_hours_and_with_its_file(client, app, as_a):
    key = {**as_a, "Idempotency-Key": "nightly"}
    first = upload(client, key).json()["id"]
    with app.state.ctx.db.session() as s:
        s.execute(update(FileIdempotencyRow).values(created_at=FileIdempotencyRow.created_at
                                                    - 24 * 3600 - 1))
    second = upload(client, key).json()["id"]
    client.delete(f"/v1/files/{second}", headers=as_a)
    third = upload(client, key).json()["id"]

    assert len({first, second, third}) == 3


def test_an_idempotency_key_too_long_is_refused(client, as_a):
    resp = upload(client, {**as_a, "Idempotency-Key": "k" * 256})
    assert_envelope(resp, 400, param="Idempotency-Key")
