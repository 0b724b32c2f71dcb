"""HTTP routes of the Models API. Ids hold ``:``; the ``path`` converter also takes ``%2F``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.deps import CallerDep, ContextDep, DbDep
from service.models import download, service
from service.models.protocol import ModelDeleted, ModelObject
from service.pagination import ListPage

router = APIRouter(prefix="/v1/models", tags=["models"])


# Async routes, their database work in one db.run call (service/deps.py, Transactions).


@router.get("", response_model=ListPage[ModelObject], response_model_exclude_none=True)
async def list_models(ctx: ContextDep, db: DbDep, caller: CallerDep) -> ListPage[ModelObject]:
    data = await db.run(lambda s: service.list_models(s, ctx.settings, caller, ctx.started_at))
    return ListPage(data=data, has_more=False,
                    first_id=data[0].id if data else None, last_id=data[-1].id if data else None)


# Before the catch-all routes below, which would take ``<model>/download`` as a model id.
@router.get("/{model_id:path}/download", response_model=None,
            responses={200: {"content": {"application/gzip": {}},
                             "description": "The model as a .tar.gz archive, streamed."}})
async def download_model(ctx: ContextDep, db: DbDep, caller: CallerDep,
                         model_id: str) -> Response:
    literal = f"{model_id}/download"
    if literal in ctx.settings.base_model_configs():
        # Only a base model id can end so: OpenAI's retrieve route keeps its meaning.
        return await retrieve_model(ctx, db, caller, literal)
    target = await db.run(lambda s: download.find(s, caller, model_id))
    # The bucket is listed before the 200 starts (S3 away: an enveloped 503); Starlette then
    # reads the archive's sync iterator on its thread pool, off the event loop.
    archive = await run_in_threadpool(download.prepare, ctx.settings, ctx.blobs, target)
    return StreamingResponse(archive.chunks(), media_type="application/gzip", headers={
        "Content-Disposition": f'attachment; filename="{archive.filename}"'})


@router.get("/{model_id:path}", response_model=ModelObject)
async def retrieve_model(ctx: ContextDep, db: DbDep, caller: CallerDep,
                         model_id: str) -> ModelObject:
    return await db.run(
        lambda s: service.resolve(s, ctx.settings, caller, model_id, ctx.started_at).public)


@router.delete("/{model_id:path}", response_model=ModelDeleted)
async def delete_model(ctx: ContextDep, db: DbDep, caller: CallerDep,
                       model_id: str) -> ModelDeleted:
    await db.run(lambda s: service.delete(s, ctx.settings, ctx.blobs, caller, model_id))
    return ModelDeleted(id=model_id)
