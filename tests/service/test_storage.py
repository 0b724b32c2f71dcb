"""The bucket store against real SeaweedFS: what two API replicas starting together meet."""

from __future__ import annotations

import uuid

from service.storage import BlobStore


def test_a_bucket_another_replica_creates_first_is_taken_as_created(s3_server):
    """Both replicas find no bucket; the other one creates it between this one's HeadBucket
    and CreateBucket, and S3 answers ``BucketAlreadyOwnedByYou``: that is done, not a crash
    of this replica's start."""
    name = f"race-{uuid.uuid4().hex[:12]}"
    blobs = BlobStore(s3_server.endpoint_url, name, s3_server.access_key, s3_server.secret_key)
    other = BlobStore(s3_server.endpoint_url, name, s3_server.access_key, s3_server.secret_key)
    created_first: list[str] = []

    def other_replica_wins(**_: object) -> None:
        other.client.create_bucket(Bucket=name)
        created_first.append(name)

    blobs.client.meta.events.register("before-call.s3.CreateBucket", other_replica_wins)
    blobs.ensure_bucket()

    assert created_first == [name]  # the race happened, on the real server
    blobs.client.meta.events.unregister("before-call.s3.CreateBucket", other_replica_wins)
    blobs.client.put_object(Bucket=name, Key="k", Body=b"v")
    assert other.client.get_object(Bucket=name, Key="k")["Body"].read() == b"v"
