"""The few S3 calls a run makes: read the spec and training file, write events and adapters.

Credentials come from the AWS_* environment variables the job's runtime_env carries; the
endpoint comes from the spec (or ``AWS_ENDPOINT_URL`` before the spec is read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import pyarrow.fs
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from contract.spec import S3Location


def client(location: S3Location | None = None) -> Any:
    """A boto3 S3 client; without ``location`` boto3 reads ``AWS_ENDPOINT_URL`` itself."""
    if location is None:
        return boto3.client("s3")
    return boto3.client("s3", endpoint_url=location.endpoint_url, region_name=location.region)


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b.json`` -> ``("bucket", "a/b.json")``."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise ValueError(f"expected s3://<bucket>/<key>, got {url!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def read_bytes(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


MULTIPART_THRESHOLD = 64 * 1024**2
"""Files larger than this go up in parts: S3 refuses a single PUT over 5 GB, and a lost
part is retried alone."""

PART_SIZE = 64 * 1024**2
"""One part of a multipart upload; S3 allows 10,000 parts, so 640 GiB per file."""


def upload_files(s3: Any, bucket: str, prefix: str, paths: list[Path],
                 part_size: int = PART_SIZE) -> list[str]:
    """``upload_file`` per file, in the given order (put the file readers check last);
    multipart above :data:`MULTIPART_THRESHOLD`, streamed from disk, never read whole."""
    transfer = TransferConfig(multipart_threshold=min(MULTIPART_THRESHOLD, part_size),
                              multipart_chunksize=part_size)
    keys = []
    for path in paths:
        key = f"{prefix}{path.name}"
        s3.upload_file(str(path), bucket, key, Config=transfer)
        keys.append(key)
    return keys


def exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def pyarrow_filesystem(location: S3Location) -> Any:
    """The bucket as Ray Train reads and writes checkpoints: ``<bucket>/<key>`` paths."""
    endpoint = urlparse(location.endpoint_url)
    return pyarrow.fs.S3FileSystem(
        endpoint_override=endpoint.netloc,
        scheme=endpoint.scheme or "https",
        region=location.region,
    )
