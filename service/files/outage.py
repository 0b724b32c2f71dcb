"""The bucket's failures as the Files API answers them, instead of a plain-text 500.

botocore raises ``EndpointConnectionError`` (and other ``BotoCoreError``) when S3 cannot be
reached and ``ClientError`` when it answers with an error; boto3's transfer manager may wrap
either in ``S3UploadFailedError``. Whatever the cause, the client can do nothing but retry
later: a 503 ``service_unavailable``, which the official SDK retries by itself. The one
exception is an object that is missing while its row is listed (:class:`FileContentMissing`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from service.errors import APIError, UpstreamUnavailable

MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class FileContentMissing(APIError):
    """The file is listed but the bucket has no bytes for it: the server's fault, not the
    caller's, so a 500 ``server_error`` rather than a 404 that would contradict
    ``GET /v1/files/{id}``. (Row-first deletion never leaves this state; only bytes removed
    behind the service's back do.)"""

    status_code = 500
    type = "server_error"
    code = "file_content_missing"


def is_missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in MISSING_CODES


@contextmanager
def bucket_call(file_id: str, action: str) -> Iterator[None]:
    """Run one bucket call for ``file_id``; its failure leaves as an enveloped error.

    ``action`` says what failed in the message ("storing", "reading", ...); S3's own error
    text stays in the logs, since it may name the endpoint or the bucket.
    """
    try:
        yield
    except ClientError as e:
        if is_missing(e):
            raise FileContentMissing(
                f"The content of file {file_id} is missing from storage.", param="file_id",
            ) from e
        raise _unavailable(file_id, action) from e
    except (BotoCoreError, S3UploadFailedError) as e:
        raise _unavailable(file_id, action) from e


def _unavailable(file_id: str, action: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"File storage is unavailable while {action} {file_id}; retry later.")
