"""The API application: ``create_app(settings)`` builds it; nothing happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import httpx
from fastapi import FastAPI

from service.auth import KeyRing, parse_api_keys
from service.chat.router import router as chat_router
from service.context import AppContext, RayRuns
from service.db import Database, PoolSize, migrate, require_head
from service.errors import install_handlers
from service.files.router import router as files_router
from service.files.sweeper import FileSweeper
from service.guard import RequestGuard
from service.ids import now
from service.jobs.ray_jobs import RayJobs
from service.jobs.router import router as jobs_router
from service.jobs.scheduler import Scheduler
from service.metrics import install_metrics
from service.models.router import router as models_router
from service.outages import install_outage_handlers
from service.readiness import readyz
from service.reports.router import router as reports_router
from service.settings import Settings
from service.storage import BlobStore
from service.ui.router import router as ui_router
from service.webhooks import WebhookSender

log = logging.getLogger("openft")


def build_context(settings: Settings, *, blobs: BlobStore | None = None,
                  ray: RayRuns | None = None) -> AppContext:
    """What the app holds; ``blobs`` and ``ray`` default to the configured bucket and Ray
    (tests pass fakes)."""
    if not settings.api_keys:
        raise ValueError("OPENFT_API_KEYS is not set: no caller could authenticate")
    db = Database(settings.resolved_database_url, PoolSize(
        settings.db_pool_size, settings.db_max_overflow, settings.db_pool_timeout_s))
    if settings.migrate_on_start:
        migrate(db.engine)
    else:
        require_head(db.engine)
    if blobs is None:
        blobs = BlobStore.from_settings(settings)
        blobs.ensure_bucket()
    return AppContext(
        settings=settings, db=db, blobs=blobs, keys=KeyRing(parse_api_keys(settings.api_keys)),
        ray=ray or RayJobs.from_settings(settings),
        serving=httpx.AsyncClient(base_url=settings.resolved_serving_url,
                                  headers=settings.serving_headers(),
                                  timeout=httpx.Timeout(600.0, connect=5.0)),
        started_at=now(),
    )


def create_app(settings: Settings | None = None, *, run_scheduler: bool = True,
               context: Callable[[Settings], AppContext] = build_context) -> FastAPI:
    """The API app; ``context`` builds what the lifespan opens (tests give fakes of the
    bucket and Ray here)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = \
            settings.request_threads
        ctx = await asyncio.to_thread(context, settings)
        app.state.ctx = ctx
        sender = WebhookSender(ctx.db, settings)
        scheduler = Scheduler(ctx, metrics=app.state.metrics.scheduler)
        sweeper = FileSweeper(ctx.db, ctx.blobs, settings)
        tasks = [asyncio.create_task(scheduler.run_forever()),
                 asyncio.create_task(sender.run_forever()),
                 asyncio.create_task(sweeper.run_forever())] if run_scheduler else []
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await sender.aclose()
            await ctx.serving.aclose()
            ctx.ray.close()
            ctx.db.dispose()

    app = FastAPI(title="openft", version="0.1.0", lifespan=lifespan)
    app.add_middleware(RequestGuard)  # first added, innermost: metrics see its 401s and 413s
    install_handlers(app)
    install_outage_handlers(app)
    install_metrics(app)
    for router in (files_router, reports_router, jobs_router, models_router, chat_router,
                   ui_router):
        app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str | int]:
        # The pid lets a supervisor check that the process it started is the one answering.
        return {"status": "ok", "pid": os.getpid()}

    # Readiness (database, bucket, Ray answer); no key: probes carry none.
    app.add_api_route("/readyz", readyz, methods=["GET"], include_in_schema=False)

    return app
