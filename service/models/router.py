"""HTTP routes of the Models API. Ids hold ``:``; the ``path`` converter also takes ``%2F``."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import CallerDep, ContextDep, DbDep
from service.models import service
from service.models.protocol import ModelDeleted, ModelObject
from service.pagination import ListPage

router = APIRouter(prefix="/v1/models", tags=["models"])


# Async routes, their database work in one db.run call (service/deps.py, Transactions).


@router.get("", response_model=ListPage[ModelObject], response_model_exclude_none=True)
async def list_models(ctx: ContextDep, db: DbDep, caller: CallerDep) -> ListPage[ModelObject]:
    data = await db.run(lambda s: service.list_models(s, ctx.settings, caller, ctx.started_at))
    return ListPage(data=data, has_more=False,
                    first_id=data[0].id if data else None, last_id=data[-1].id if data else None)


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
