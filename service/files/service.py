"""Files: bytes go to the bucket under ``files/{id}``, metadata to the ``files`` table.

The row is the truth about a file. Upload writes the bytes first and the row second, delete
removes the row first and the bytes second: either way a crash in between leaves bytes with
no row (an orphan, removed by :mod:`service.files.sweeper`), never a listed file without
content.
"""

from __future__ import annotations

import itertools
import logging
import unicodedata
from collections.abc import Iterator
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session

from contract.bucket import file_key
from service.auth import Caller
from service.db import FileRow, JobRow
from service.errors import Conflict, InvalidRequest, NotFound, UpstreamUnavailable
from service.files import idempotency
from service.files.outage import bucket_call
from service.files.protocol import FileObject
from service.ids import created, new_id, now
from service.lifecycle import ACTIVE
from service.storage import BlobStore

log = logging.getLogger("openft")

UPLOAD_PURPOSES = {"fine-tune"}
MAX_FILENAME_LENGTH = 512
"""The ``files.filename`` column's width."""


def to_object(row: FileRow) -> FileObject:
    return FileObject(id=row.id, bytes=row.bytes, created_at=row.created_at,
                      filename=row.filename, purpose=row.purpose, status=row.status)


def check_filename(filename: str) -> str:
    """The name as stored; a 400 on ``file`` for one that would fail in the database (too
    long for the column; NUL, which PostgreSQL refuses in text) or that no file system or
    terminal shows faithfully (any other control character). Refused rather than cleaned:
    the SDK echoes the name the caller sent, and a silently different one surprises.

    >>> check_filename("train.jsonl")
    'train.jsonl'
    """
    if len(filename) > MAX_FILENAME_LENGTH:
        raise InvalidRequest(
            f"The filename is {len(filename)} characters long; the limit is "
            f"{MAX_FILENAME_LENGTH}.", param="file", code="invalid_value")
    bad = next((c for c in filename if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise InvalidRequest(
            f"The filename holds a control character (U+{ord(bad):04X}); rename the file.",
            param="file", code="invalid_value")
    return filename


def check_upload(session: Session, caller: Caller, filename: str, purpose: str,
                 idempotency_key: str | None) -> FileObject | None:
    """Refuse a bad upload before its bytes are stored; with ``idempotency_key``, the file a
    repeat of it created (then nothing is stored)."""
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"Invalid purpose {purpose!r}: openft accepts files with purpose 'fine-tune'.",
            param="purpose", code="invalid_value",
        )
    check_filename(filename)
    if idempotency_key is None:
        return None
    idempotency.check_key(idempotency_key)
    first = idempotency.replay(session, caller.organization, idempotency_key, now())
    return None if first is None else to_object(first)


def store_bytes(blobs: BlobStore, stream: IO[bytes]) -> str:
    """The upload's bytes in the bucket, under a new file id. Bytes first, row second
    (:func:`record`): a row never points at an object that is not there. No database
    connection is held meanwhile."""
    file_id = new_id("file")
    with bucket_call(file_id, "storing"):
        blobs.upload_stream(file_key(file_id), stream)
    return file_id


def record(session: Session, blobs: BlobStore, caller: Caller, file_id: str, filename: str,
           purpose: str, size: int, idempotency_key: str | None = None) -> FileObject:
    """The row of stored bytes; with ``idempotency_key``, the first file if a concurrent
    repeat recorded one meanwhile (these bytes are then deleted)."""
    org = caller.organization
    if idempotency_key is not None:
        first = idempotency.claim(session, org, idempotency_key, file_id, now())
        if first is not None:  # a concurrent repeat won: keep its copy, not ours
            _delete_bytes(blobs, file_key(file_id))
            return to_object(first)
    row = FileRow(id=file_id, organization=org, purpose=purpose, filename=filename,
                  bytes=size, status="processed", s3_key=file_key(file_id), **created())
    session.add(row)
    return to_object(row)


def register(session: Session, organization: str, key: str, filename: str, purpose: str,
             size: int) -> FileRow:
    """A file the service wrote itself (a job's result CSV), already in the bucket."""
    row = FileRow(id=new_id("file"), organization=organization, purpose=purpose,
                  filename=filename, bytes=size, status="processed", s3_key=key,
                  **created())
    session.add(row)
    return row


def open_content(blobs: BlobStore, row: FileRow) -> Iterator[bytes]:
    """The file's bytes, with the object already fetched: S3 down or the object missing
    raise here (an enveloped 503 or 500) instead of after a 200 has started streaming."""
    chunks = blobs.iter_chunks(row.s3_key)
    with bucket_call(row.id, "reading"):
        first = next(chunks, None)
    return iter(()) if first is None else itertools.chain([first], chunks)


def get_row(session: Session, caller: Caller, file_id: str, param: str = "file_id") -> FileRow:
    row = session.get(FileRow, file_id)
    if row is None or row.organization != caller.organization:
        raise NotFound(f"No such File object: {file_id}", param=param)
    return row


def list_rows(session: Session, caller: Caller, purpose: str | None, limit: int,
              order: str, after: str | None) -> list[FileRow]:
    q = select(FileRow).where(FileRow.organization == caller.organization)
    if purpose:
        q = q.where(FileRow.purpose == purpose)
    desc = order == "desc"
    if after:
        anchor = get_row(session, caller, after, param="after")
        key = (anchor.created_seq, anchor.id)
        cmp = (FileRow.created_seq, FileRow.id)
        q = q.where(
            (cmp[0] < key[0]) | ((cmp[0] == key[0]) & (cmp[1] < key[1]))
            if desc else (cmp[0] > key[0]) | ((cmp[0] == key[0]) & (cmp[1] > key[1]))
        )
    ordering = (FileRow.created_seq.desc(), FileRow.id.desc()) if desc else (
        FileRow.created_seq.asc(), FileRow.id.asc())
    return list(session.scalars(q.order_by(*ordering).limit(limit + 1)))


def delete(session: Session, blobs: BlobStore, caller: Caller, file_id: str) -> None:
    row = get_row(session, caller, file_id)
    # Every job not yet settled reads the file again: a paused one when it resumes.
    in_use = session.scalar(
        select(JobRow.id).where(
            JobRow.status.in_(ACTIVE),
            (JobRow.training_file == file_id) | (JobRow.validation_file == file_id),
        ).limit(1)
    )
    if in_use:
        raise Conflict(f"File {file_id} is in use by fine-tuning job {in_use}.",
                       param="file_id", code="file_in_use")
    # Row first, bytes second: once the commit is through the file is gone for every
    # reader; if the bytes then fail to go (S3 down, a crash), they are an orphan the sweeper
    # removes, and the delete still succeeded.
    session.delete(row)
    session.commit()
    _delete_bytes(blobs, row.s3_key)


def _delete_bytes(blobs: BlobStore, key: str) -> None:
    """Best effort: bytes left behind have no row, and the sweeper removes them later."""
    try:
        with bucket_call(key, "deleting"):
            blobs.delete(key)
    except UpstreamUnavailable:
        log.warning("could not delete %s from the bucket; the file sweeper will", key)
