"""The bucket: uploaded files, job specs, progress events and adapters (S3 through boto3)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from service.settings import Settings


@dataclass(frozen=True)
class StoredObject:
    key: str
    modified: float
    """Unix time of the object's last write."""
    size: int = 0
    """Bytes (what a streamed archive announces before the object's bytes)."""


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload begun and not finished."""

    key: str
    upload_id: str
    initiated: float
    """Unix time it was begun."""


class BlobStore:
    """Thin seam over one S3 bucket, so the rest of the service never speaks boto3.

    ``access_key``/``secret_key`` left None: boto3's default credential chain (an IAM role,
    workload identity, ``AWS_*`` variables) finds them.
    """

    def __init__(self, endpoint_url: str, bucket: str, access_key: str | None = None,
                 secret_key: str | None = None, region: str = "us-east-1"):
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.region = region
        self._s3 = self._client(access_key, secret_key, Config(
            retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"}))
        # A readiness probe must answer within seconds: one try, short timeouts.
        self._probe = self._client(access_key, secret_key, Config(
            connect_timeout=2, read_timeout=2, retries={"max_attempts": 1},
            s3={"addressing_style": "path"}))

    @classmethod
    def from_settings(cls, settings: Settings) -> BlobStore:
        """The configured bucket, with the configured keys or the default chain."""
        access_key, secret_key = settings.s3_credentials() or (None, None)
        return cls(settings.resolved_s3_endpoint_url, settings.s3_bucket, access_key,
                   secret_key, settings.s3_region)

    def _client(self, access_key: str | None, secret_key: str | None, config: Config) -> Any:
        keys = ({} if access_key is None else
                {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key})
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            config=config, **keys)

    def ping(self) -> None:
        """Raise unless the bucket answers within a few seconds (``HeadBucket``)."""
        self._probe.head_bucket(Bucket=self.bucket)

    def ensure_bucket(self) -> None:
        """Create the bucket when it is missing. Another process (an API replica starting
        beside this one) may create it between the two calls: already ours is done."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                self._s3.create_bucket(Bucket=self.bucket)
            except self._s3.exceptions.BucketAlreadyOwnedByYou:
                pass

    def upload_stream(self, key: str, stream: IO[bytes]) -> None:
        """Multipart upload in chunks: a large file is never held in memory whole."""
        self._s3.upload_fileobj(stream, self.bucket, key)

    def upload_file(self, key: str, path: Path, part_size: int = 64 * 1024 * 1024) -> None:
        """A file of any size: multipart above ``part_size`` (one PUT is capped at 5 GB),
        a few parts in parallel."""
        config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)
        self._s3.upload_file(str(path), self.bucket, key, Config=config)

    @property
    def client(self) -> Any:
        """The boto3 client itself, for code outside the service that takes any boto3-like
        client (:func:`contract.model_cache.ensure_local`)."""
        return self._s3

    def put(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    def get(self, key: str) -> bytes:
        return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        body = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=key)

    def list_keys(self, prefix: str, start_after: str = "") -> list[str]:
        return sorted(o.key for o in self.list_objects(prefix, start_after))

    def list_objects(self, prefix: str, start_after: str = "") -> Iterator[StoredObject]:
        """Every object under ``prefix`` (after ``start_after``) with its last write time
        (what a sweep ages) and its size."""
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        for page in self._s3.get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                yield StoredObject(obj["Key"], obj["LastModified"].timestamp(), obj["Size"])

    def list_uploads(self, prefix: str) -> Iterator[PendingUpload]:
        """Multipart uploads under ``prefix`` begun and neither completed nor aborted."""
        for page in self._s3.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                yield PendingUpload(upload["Key"], upload["UploadId"],
                                    upload["Initiated"].timestamp())

    def abort_upload(self, upload: PendingUpload) -> None:
        """Abort ``upload`` and free its parts; one already gone (another process's sweep
        aborted it first) is no error."""
        try:
            self._s3.abort_multipart_upload(Bucket=self.bucket, Key=upload.key,
                                            UploadId=upload.upload_id)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise

    def exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError:
            return False
        return True
