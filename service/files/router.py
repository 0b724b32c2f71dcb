"""HTTP routes of the Files API."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.deps import CallerDep, ContextDep, SessionDep
from service.errors import PayloadTooLarge
from service.files import service
from service.files.protocol import FileDeleted, FileObject
from service.pagination import ListPage, page

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", response_model=FileObject)
async def upload_file(
    ctx: ContextDep, session: SessionDep, caller: CallerDep,
    file: UploadFile, purpose: Annotated[str, Form()],
) -> FileObject:
    # UploadFile spools to disk past 1 MB; boto3 then streams it to S3 in parts.
    size = file.size if file.size is not None else 0
    limit = ctx.settings.max_upload_bytes
    if size > limit:
        raise PayloadTooLarge(f"File is {size} bytes; the limit is {limit} bytes.",
                              param="file")
    return await run_in_threadpool(
        service.create, session, ctx.blobs, caller, file.file,
        file.filename or "upload.jsonl", purpose, size,
    )


@router.get("", response_model=ListPage[FileObject])
def list_files(
    session: SessionDep, caller: CallerDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> ListPage[FileObject]:
    rows = service.list_rows(session, caller, purpose, limit, order, after)
    return page([service.to_object(r) for r in rows], limit)


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(session: SessionDep, caller: CallerDep, file_id: str) -> FileObject:
    return service.to_object(service.get_row(session, caller, file_id))


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(ctx: ContextDep, session: SessionDep, caller: CallerDep,
                file_id: str) -> FileDeleted:
    service.delete(session, ctx.blobs, caller, file_id)
    return FileDeleted(id=file_id)


@router.get("/{file_id}/content")
def file_content(ctx: ContextDep, session: SessionDep, caller: CallerDep,
                 file_id: str) -> StreamingResponse:
    row = service.get_row(session, caller, file_id)
    return StreamingResponse(ctx.blobs.iter_chunks(row.s3_key),
                             media_type="application/octet-stream")
