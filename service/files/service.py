"""Files: bytes go to the bucket under ``files/{id}``, metadata to the ``files`` table."""

from __future__ import annotations

from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session

from contract.bucket import file_key
from service.auth import Caller
from service.db import FileRow, JobRow
from service.errors import Conflict, InvalidRequest, NotFound
from service.files.protocol import FileObject
from service.ids import new_id, now
from service.lifecycle import ACTIVE
from service.storage import BlobStore

UPLOAD_PURPOSES = {"fine-tune"}


def to_object(row: FileRow) -> FileObject:
    return FileObject(id=row.id, bytes=row.bytes, created_at=row.created_at,
                      filename=row.filename, purpose=row.purpose, status=row.status)


def create(session: Session, blobs: BlobStore, caller: Caller, stream: IO[bytes],
           filename: str, purpose: str, size: int) -> FileObject:
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"Invalid purpose {purpose!r}: openft accepts files with purpose 'fine-tune'.",
            param="purpose", code="invalid_value",
        )
    file_id = new_id("file")
    # Bytes first, row second: a row never points at an object that is not there.
    blobs.upload_stream(file_key(file_id), stream)
    row = FileRow(id=file_id, organization=caller.organization, purpose=purpose,
                  filename=filename, bytes=size, created_at=now(), status="processed",
                  s3_key=file_key(file_id))
    session.add(row)
    return to_object(row)


def register(session: Session, organization: str, key: str, filename: str, purpose: str,
             size: int) -> FileRow:
    """A file the service wrote itself (a job's result CSV), already in the bucket."""
    row = FileRow(id=new_id("file"), organization=organization, purpose=purpose,
                  filename=filename, bytes=size, created_at=now(), status="processed",
                  s3_key=key)
    session.add(row)
    return row


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
        key = (anchor.created_at, anchor.id)
        cmp = (FileRow.created_at, FileRow.id)
        q = q.where(
            (cmp[0] < key[0]) | ((cmp[0] == key[0]) & (cmp[1] < key[1]))
            if desc else (cmp[0] > key[0]) | ((cmp[0] == key[0]) & (cmp[1] > key[1]))
        )
    ordering = (FileRow.created_at.desc(), FileRow.id.desc()) if desc else (
        FileRow.created_at.asc(), FileRow.id.asc())
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
    session.delete(row)
    session.flush()
    blobs.delete(row.s3_key)
