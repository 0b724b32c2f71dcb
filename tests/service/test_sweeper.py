"""The file sweeper: bytes under ``files/`` with no row and multipart uploads never finished
go once older than the grace period; fresh ones and rowed ones stay."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from contract.bucket import file_key, results_key
from service.db import Database, FileIdempotencyRow, FileRow, migrate
from service.files import idempotency
from service.files.sweeper import FILES_PREFIX, FileSweeper, orphans, stale_uploads, sweep
from service.settings import Settings
from service.storage import BlobStore, PendingUpload, StoredObject

GRACE = 3600.0
LATER = time.time() + 2 * GRACE  # every object written now is past the grace by then


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    migrate(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def bucket(s3_server) -> BlobStore:
    """A bucket of its own: a sweep must not see other tests' files."""
    blobs = BlobStore(s3_server.endpoint_url, f"sweep-{uuid.uuid4().hex[:12]}",
                      s3_server.access_key, s3_server.secret_key)
    blobs.ensure_bucket()
    return blobs


def add_row(db: Database, file_id: str, key: str) -> None:
    with db.session() as s:
        s.add(FileRow(id=file_id, organization="org", purpose="fine-tune", filename="f",
                      bytes=1, created_at=0, status="processed", s3_key=key))


def test_an_orphan_older_than_the_grace_is_deleted(db, bucket):
    bucket.put(file_key("file-orphan"), b"x")

    report = sweep(db, bucket, GRACE, now=LATER)

    assert report.orphans_deleted == [file_key("file-orphan")]
    assert not bucket.exists(file_key("file-orphan"))


def test_a_fresh_orphan_is_kept_an_upload_may_be_writing_its_row(db, bucket):
    bucket.put(file_key("file-new"), b"x")

    report = sweep(db, bucket, GRACE)

    assert report.orphans_deleted == [] and bucket.exists(file_key("file-new"))


def test_bytes_with_a_row_are_kept_and_other_prefixes_untouched(db, bucket):
    bucket.put(file_key("file-kept"), b"x")
    add_row(db, "file-kept", file_key("file-kept"))
    bucket.put(results_key("ftjob-1"), b"step,loss\n")  # a result file's bytes live elsewhere

    report = sweep(db, bucket, GRACE, now=LATER)

    assert report.orphans_deleted == []
    assert bucket.exists(file_key("file-kept")) and bucket.exists(results_key("ftjob-1"))


def test_a_stale_multipart_upload_is_aborted_and_a_fresh_one_kept(db, bucket):
    s3 = bucket.client
    upload = s3.create_multipart_upload(Bucket=bucket.bucket, Key=file_key("file-half"))
    s3.upload_part(Bucket=bucket.bucket, Key=file_key("file-half"), PartNumber=1,
                   UploadId=upload["UploadId"], Body=b"x" * 1024)

    assert sweep(db, bucket, GRACE).uploads_aborted == []
    assert [u.upload_id for u in bucket.list_uploads(FILES_PREFIX)] == [upload["UploadId"]]

    report = sweep(db, bucket, GRACE, now=LATER)

    assert report.uploads_aborted == [file_key("file-half")]
    assert list(bucket.list_uploads(FILES_PREFIX)) == []


def test_expired_idempotency_keys_are_forgotten(db, bucket):
    now = int(time.time())
    with db.session() as s:
        s.add(FileIdempotencyRow(organization="org", key="old", file_id="file-1",
                                 created_at=now - idempotency.WINDOW_S - 1))
        s.add(FileIdempotencyRow(organization="org", key="new", file_id="file-2",
                                 created_at=now))

    assert sweep(db, bucket, GRACE, now=now).keys_forgotten == 1
    with db.session() as s:
        assert [r.key for r in s.query(FileIdempotencyRow)] == ["new"]


def test_a_concurrent_repeat_of_a_key_gets_the_winners_file(db):
    add_row(db, "file-first", file_key("file-first"))
    with db.session() as first:
        assert idempotency.claim(first, "org", "k", "file-first", 100) is None
    with db.session() as second:
        # it looked before the first committed (replay found nothing), then claims
        winner = idempotency.claim(second, "org", "k", "file-second", 101)
        assert winner is not None and winner.id == "file-first"


@pytest.mark.parametrize(("modified", "rowed", "swept"), [
    (10.0, set(), ["files/x"]),
    (10.0, {"files/x"}, []),
    (60.0, set(), []),  # written after the cutoff
])
def test_orphans_table(modified, rowed, swept):
    assert orphans([StoredObject("files/x", modified)], rowed, cutoff=50.0) == swept


def test_stale_uploads_are_those_begun_before_the_cutoff():
    old, new = PendingUpload("files/a", "1", 10.0), PendingUpload("files/b", "2", 90.0)
    assert stale_uploads([old, new], cutoff=50.0) == [old]


def test_the_lifespan_sweeper_keeps_sweeping_after_a_failed_sweep(db, bucket, s3_server,
                                                                   tmp_path):
    settings = Settings(data_dir=tmp_path, files_sweep_interval_s=0.05, files_sweep_grace_s=0)
    calls = 0

    class FlakyBucket(BlobStore):
        def delete(self, key: str) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("S3 hiccup")
            super().delete(key)

    flaky = FlakyBucket(s3_server.endpoint_url, bucket.bucket, s3_server.access_key,
                        s3_server.secret_key)
    bucket.put(file_key("file-orphan"), b"x")
    time.sleep(1.1)  # S3 times have one-second resolution

    async def run() -> None:
        task = asyncio.create_task(FileSweeper(db, flaky, settings).run_forever())
        deadline = time.monotonic() + 20
        while bucket.exists(file_key("file-orphan")) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(run())
    assert calls >= 2 and not bucket.exists(file_key("file-orphan"))

