"""``GET /v1/files/{file_id}/report``: the data report (an openft extension, docs/api.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from service.deps import CallerDep, ContextDep, DbDep
from service.files.report.protocol import FileReport
from service.reports import service

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.get("/{file_id}/report", response_model=FileReport)
async def file_report(
    ctx: ContextDep, db: DbDep, caller: CallerDep, file_id: str,
    model: str | None = None, validation_file: str | None = None,
    max_seq_length: Annotated[int | None, Query(ge=1)] = None,
    n_epochs: Annotated[int | None, Query(ge=1, le=50)] = None,
) -> FileReport:
    """Checked with the database, then the file is scanned in a worker thread holding no
    connection: a large file takes seconds."""
    plan = await db.run(lambda s: service.plan(s, ctx, caller, file_id, model, validation_file))
    return await run_in_threadpool(service.build, ctx, plan, max_seq_length, n_epochs)
