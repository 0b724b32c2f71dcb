"""Files API, authentication and organization isolation through HTTP."""

from __future__ import annotations

from tests.service.conftest import chat_jsonl


def upload(client, headers, body: bytes = b"", purpose: str = "fine-tune", name="train.jsonl"):
    return client.post("/v1/files", headers=headers, data={"purpose": purpose},
                       files={"file": (name, body or chat_jsonl(), "application/jsonl")})


def assert_envelope(resp, status: int, param=None, code=None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


def test_missing_and_wrong_key_answer_401_with_envelope(client):
    assert_envelope(client.get("/v1/files"), 401, code="invalid_api_key")
    resp = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    err = assert_envelope(resp, 401, code="invalid_api_key")
    assert "nope" not in err["message"]  # a key is never echoed back


def test_upload_list_retrieve_content_delete(client, as_a):
    body = chat_jsonl(12)
    created = upload(client, as_a, body).json()
    assert created["object"] == "file" and created["id"].startswith("file-")
    assert created["bytes"] == len(body) and created["filename"] == "train.jsonl"
    assert created["purpose"] == "fine-tune"

    listed = client.get("/v1/files", headers=as_a).json()
    assert listed["object"] == "list" and [f["id"] for f in listed["data"]] == [created["id"]]
    assert client.get(f"/v1/files/{created['id']}", headers=as_a).json() == created
    assert client.get(f"/v1/files/{created['id']}/content", headers=as_a).content == body

    deleted = client.delete(f"/v1/files/{created['id']}", headers=as_a).json()
    assert deleted == {"id": created["id"], "object": "file", "deleted": True}
    assert_envelope(client.get(f"/v1/files/{created['id']}", headers=as_a), 404)


def test_unknown_purpose_is_refused_naming_the_parameter(client, as_a):
    assert_envelope(upload(client, as_a, purpose="assistants"), 400, param="purpose")


def test_list_paginates_with_after(client, as_a):
    ids = [upload(client, as_a).json()["id"] for _ in range(3)]
    first = client.get("/v1/files?limit=2", headers=as_a).json()
    assert first["has_more"] is True and len(first["data"]) == 2
    rest = client.get(f"/v1/files?limit=2&after={first['last_id']}", headers=as_a).json()
    assert rest["has_more"] is False
    assert sorted(f["id"] for f in first["data"] + rest["data"]) == sorted(ids)


def test_other_organization_sees_nothing(client, as_a, as_b):
    file_id = upload(client, as_a).json()["id"]
    assert client.get("/v1/files", headers=as_b).json()["data"] == []
    for method, path in [("GET", f"/v1/files/{file_id}"),
                         ("GET", f"/v1/files/{file_id}/content"),
                         ("DELETE", f"/v1/files/{file_id}")]:
        assert_envelope(client.request(method, path, headers=as_b), 404)
    # and org A still has it: nothing was lost by B's attempts
    assert client.get(f"/v1/files/{file_id}/content", headers=as_a).content == chat_jsonl()
