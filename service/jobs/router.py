"""HTTP routes of the fine-tuning jobs API."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from service.deps import CallerDep, ContextDep, DbDep
from service.jobs import live_events, service
from service.jobs.protocol import CreateJobRequest, FineTuningJob, JobCheckpoint, JobEvent
from service.pagination import ListPage, limit_query, page

log = logging.getLogger("openft.jobs")
router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
Limit = limit_query(1000)

# Every route is async and does its database work in one db.run call (service/deps.py,
# Transactions): one pool thread per request, and the answer serialized on the event loop.


@router.post("", response_model=FineTuningJob)
async def create_job(ctx: ContextDep, db: DbDep, caller: CallerDep,
                     body: CreateJobRequest) -> FineTuningJob:
    return await db.run(lambda s: service.create(ctx, s, caller, body))


@router.get("", response_model=ListPage[FineTuningJob])
async def list_jobs(request: Request, db: DbDep, caller: CallerDep, limit: Limit = 20,
                    after: str | None = None) -> ListPage[FineTuningJob]:
    # OpenAI's filter syntax: ?metadata[key]=value (several allowed, all must match)
    metadata = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
                if k.startswith("metadata[") and k.endswith("]")}
    return await db.run(lambda s: page(
        [service.to_object(r) for r in service.list_rows(s, caller, limit, after, metadata)],
        limit))


@router.get("/{job_id}", response_model=FineTuningJob)
async def retrieve_job(db: DbDep, caller: CallerDep, job_id: str) -> FineTuningJob:
    return await db.run(lambda s: service.to_object(service.get_row(s, caller, job_id)))


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
async def cancel_job(ctx: ContextDep, db: DbDep, caller: CallerDep,
                     job_id: str) -> FineTuningJob:
    job = await db.run(lambda s: service.cancel(s, caller, job_id))
    # Recorded first; Ray away leaves the stop owed to the scheduler, not the cancel undone.
    await run_in_threadpool(service.stop_run, ctx, job_id)
    return job


@router.post("/{job_id}/pause", response_model=FineTuningJob)
async def pause_job(ctx: ContextDep, db: DbDep, caller: CallerDep,
                    job_id: str) -> FineTuningJob:
    job, has_run = await db.run(lambda s: service.pause(s, caller, job_id))
    try:  # recorded first; the scheduler asks again while the paused job's run is alive
        if has_run:
            await run_in_threadpool(service.request_pause, ctx.blobs, job_id)
    except Exception as e:  # noqa: BLE001 - the bucket away: the pause stands, asked later
        log.warning("pause of %s recorded; its run is asked to stop later: %s", job_id, e)
    return job


@router.post("/{job_id}/resume", response_model=FineTuningJob)
async def resume_job(ctx: ContextDep, db: DbDep, caller: CallerDep,
                     job_id: str) -> FineTuningJob:
    return await db.run(lambda s: service.resume(s, ctx.blobs, caller, job_id))


@router.get("/{job_id}/events", response_model=ListPage[JobEvent], responses={200: {
    "content": {live_events.EVENT_STREAM: {}},
    "description": "With stream=true or Accept: text/event-stream: the events as they are "
                   "ingested, oldest first, then an `end` message once the job settles."}})
async def list_job_events(
        ctx: ContextDep, db: DbDep, caller: CallerDep, job_id: str, limit: Limit = 20,
        after: str | None = None, stream: bool = False,
        accept: Annotated[str | None, Header()] = None,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> ListPage[JobEvent] | Response:
    if live_events.wants_stream(stream, accept):
        # Checked before the stream starts, so a 404 or 400 is an ordinary enveloped answer.
        start = await db.run(
            lambda s: service.event_position(s, caller, job_id, after, last_event_id))
        return live_events.response(live_events.database_poll(db, job_id), start,
                                    ctx.settings.events_poll_s, ctx.settings.events_ping_s)
    return await db.run(
        lambda s: page(service.list_events(s, caller, job_id, limit, after), limit))


@router.get("/{job_id}/checkpoints", response_model=ListPage[JobCheckpoint])
async def list_job_checkpoints(db: DbDep, caller: CallerDep, job_id: str, limit: Limit = 10,
                               after: str | None = None) -> ListPage[JobCheckpoint]:
    return await db.run(
        lambda s: page(service.list_checkpoints(s, caller, job_id, limit, after), limit))
