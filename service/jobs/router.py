"""HTTP routes of the fine-tuning jobs API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.deps import CallerDep, ContextDep, SessionDep
from service.jobs import service
from service.jobs.protocol import CreateJobRequest, FineTuningJob, JobCheckpoint, JobEvent
from service.pagination import ListPage, page

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.post("", response_model=FineTuningJob)
def create_job(ctx: ContextDep, session: SessionDep, caller: CallerDep,
               body: CreateJobRequest) -> FineTuningJob:
    return service.create(ctx, session, caller, body)


@router.get("", response_model=ListPage[FineTuningJob])
def list_jobs(request: Request, session: SessionDep, caller: CallerDep, limit: Limit = 20,
              after: str | None = None) -> ListPage[FineTuningJob]:
    # OpenAI's filter syntax: ?metadata[key]=value (several allowed, all must match)
    metadata = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
                if k.startswith("metadata[") and k.endswith("]")}
    rows = service.list_rows(session, caller, limit, after, metadata)
    return page([service.to_object(r) for r in rows], limit)


@router.get("/{job_id}", response_model=FineTuningJob)
def retrieve_job(session: SessionDep, caller: CallerDep, job_id: str) -> FineTuningJob:
    return service.to_object(service.get_row(session, caller, job_id))


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
def cancel_job(ctx: ContextDep, session: SessionDep, caller: CallerDep,
               job_id: str) -> FineTuningJob:
    return service.cancel(session, ctx.ray, caller, job_id)


@router.post("/{job_id}/pause", response_model=FineTuningJob)
def pause_job(ctx: ContextDep, session: SessionDep, caller: CallerDep,
              job_id: str) -> FineTuningJob:
    return service.pause(session, ctx.blobs, caller, job_id)


@router.post("/{job_id}/resume", response_model=FineTuningJob)
def resume_job(ctx: ContextDep, session: SessionDep, caller: CallerDep,
               job_id: str) -> FineTuningJob:
    return service.resume(session, ctx.blobs, caller, job_id)


@router.get("/{job_id}/events", response_model=ListPage[JobEvent])
def list_job_events(session: SessionDep, caller: CallerDep, job_id: str,
                    limit: Limit = 20, after: str | None = None) -> ListPage[JobEvent]:
    return page(service.list_events(session, caller, job_id, limit, after), limit)


@router.get("/{job_id}/checkpoints", response_model=ListPage[JobCheckpoint])
def list_job_checkpoints(session: SessionDep, caller: CallerDep, job_id: str,
                         limit: Limit = 10, after: str | None = None) -> ListPage[JobCheckpoint]:
    return page(service.list_checkpoints(session, caller, job_id, limit, after), limit)
