"""HTTP routes of the Files API."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Header, UploadFile
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.deps import CallerDep, ContextDep, DbDep
from service.errors import PayloadTooLarge
from service.files import idempotency, service
from service.files.protocol import FileDeleted, FileObject
from service.pagination import ListPage, limit_query, page

router = APIRouter(prefix="/v1/files", tags=["files"])
FilesLimit = limit_query(10000)


# Async routes, their database work in db.run calls (service/deps.py, Transactions); the
# upload's bytes go to the bucket between two of them, holding no connection.


@router.post("", response_model=FileObject)
async def upload_file(
    ctx: ContextDep, db: DbDep, caller: CallerDep,
    file: UploadFile, purpose: Annotated[str, Form()],
    idempotency_key: Annotated[str | None, Header(alias=idempotency.HEADER)] = None,
) -> FileObject:
    # The key and the body's size were checked before the form was read
    # (service.guard); the exact size of the file is checked here.
    # UploadFile spools to disk past 1 MB; boto3 then streams it to S3 in parts.
    size = file.size if file.size is not None else 0
    limit = ctx.settings.max_upload_bytes
    if size > limit:
        raise PayloadTooLarge(f"File is {size} bytes; the limit is {limit} bytes.",
                              param="file")
    filename = file.filename or "upload.jsonl"
    first = await db.run(
        lambda s: service.check_upload(s, caller, filename, purpose, idempotency_key))
    if first is not None:
        return first
    file_id = await run_in_threadpool(service.store_bytes, ctx.blobs, file.file)
    return await db.run(lambda s: service.record(s, ctx.blobs, caller, file_id, filename,
                                                 purpose, size, idempotency_key))


@router.get("", response_model=ListPage[FileObject])
async def list_files(
    db: DbDep, caller: CallerDep,
    purpose: str | None = None,
    limit: FilesLimit = 10000,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> ListPage[FileObject]:
    return await db.run(lambda s: page(
        [service.to_object(r)
         for r in service.list_rows(s, caller, purpose, limit, order, after)], limit))


@router.get("/{file_id}", response_model=FileObject)
async def retrieve_file(db: DbDep, caller: CallerDep, file_id: str) -> FileObject:
    return await db.run(lambda s: service.to_object(service.get_row(s, caller, file_id)))


@router.delete("/{file_id}", response_model=FileDeleted)
async def delete_file(ctx: ContextDep, db: DbDep, caller: CallerDep,
                      file_id: str) -> FileDeleted:
    await db.run(lambda s: service.delete(s, ctx.blobs, caller, file_id))
    return FileDeleted(id=file_id)


@router.get("/{file_id}/content")
async def file_content(ctx: ContextDep, db: DbDep, caller: CallerDep,
                       file_id: str) -> StreamingResponse:
    # S3 down is a 503 service_unavailable and an object missing under a listed file a 500
    # file_content_missing (service.files.outage), both before the 200 starts.
    row = await db.run(lambda s: service.get_row(s, caller, file_id))
    chunks = await run_in_threadpool(service.open_content, ctx.blobs, row)
    return StreamingResponse(chunks, media_type="application/octet-stream")
