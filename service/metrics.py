"""Prometheus metrics of one API process, served at ``GET /metrics``.

:func:`install_metrics` gives each app its own ``CollectorRegistry`` (several apps in one
test process must not share counters) and records:

- ``openft_http_requests_total{method, route, status}`` and
  ``openft_http_request_duration_seconds{method, route}``: ``route`` is the route's template
  (``/v1/fine_tuning/jobs/{job_id}``), ``unmatched`` for a path no route serves. Never the
  raw path: ids would make a series per job, and would show one organization's ids to
  whoever reads the metrics.
- ``openft_jobs{status}`` and ``openft_queue_length``: read from the database at scrape
  time (:class:`JobsCollector`), so every replica reports the same numbers.
- ``openft_job_duration_seconds{status}``, ``openft_scheduler_*``: what this process's
  scheduler saw (:class:`SchedulerMetrics`); sum them over replicas.

No label carries an organization or a job id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db import Database, JobRow
from service.lifecycle import TERMINAL, JobStatus

log = logging.getLogger("openft.metrics")

UNMATCHED = "unmatched"
"""``route`` of a request no route matched (a typo, a scanner)."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted by name; any other (a client may send anything) counts as ``other``."""

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0, 600.0)
"""Seconds; up to the chat proxy's 600 s timeout (a streamed answer counts until its end)."""
JOB_BUCKETS = (10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
               86400.0, 172800.0, 604800.0)
"""Seconds from a job's creation to its end: from a job refused at validation to a week."""
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SchedulerMetrics:
    """What the scheduler loop (:class:`service.jobs.scheduler.Scheduler`) reports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """``registry``: the app's; without one (a scheduler driven by a test) the metrics
        go to a registry nobody reads."""
        registry = CollectorRegistry() if registry is None else registry
        self._ticks = Counter(
            "openft_scheduler_ticks", "Scheduler ticks run by this process.",
            registry=registry)
        self._failures = Counter(
            "openft_scheduler_tick_failures",
            "Scheduler ticks that raised (logged; the next tick tries again).",
            registry=registry)
        self._lag = Gauge(
            "openft_scheduler_tick_lag_seconds",
            "How late the last tick started after it was due (event loop or threads busy).",
            registry=registry)
        self._duration = Histogram(
            "openft_scheduler_tick_duration_seconds", "How long a scheduler tick took.",
            buckets=TICK_BUCKETS, registry=registry)
        self._jobs = Histogram(
            "openft_job_duration_seconds",
            "Seconds from a job's creation to its terminal status, observed once per job by "
            "the API process that announced it (sum over replicas).",
            ["status"], buckets=JOB_BUCKETS, registry=registry)
        for status in sorted(TERMINAL):  # present from the start, at zero
            self._jobs.labels(status=status)

    def tick_started(self, lag_s: float) -> None:
        self._lag.set(max(lag_s, 0.0))

    def tick_ended(self, seconds: float, failed: bool) -> None:
        self._ticks.inc()
        self._duration.observe(seconds)
        if failed:
            self._failures.inc()

    def job_settled(self, status: str, seconds: float) -> None:
        self._jobs.labels(status=status).observe(max(seconds, 0.0))


class JobsCollector(Collector):
    """``openft_jobs{status}`` and ``openft_queue_length``, one ``GROUP BY`` per scrape.

    ``database`` answers None until the app's lifespan has opened it (nothing reported then);
    a database that cannot be reached leaves both out of that scrape rather than failing it.
    """

    def __init__(self, database: Callable[[], Database | None]) -> None:
        self._database = database

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        db = self._database()
        if db is None:
            return []
        try:
            counts = job_counts(db)
        except SQLAlchemyError:
            log.warning("jobs metrics left out of this scrape: database error", exc_info=True)
            return []
        jobs, queue = self._families()
        for status in JobStatus:
            jobs.add_metric([status.value], counts.by_status.get(status.value, 0))
        queue.add_metric([], counts.waiting_to_launch)
        return [jobs, queue]

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("openft_jobs", "Jobs by status, all organizations.",
                              labels=["status"]),
            GaugeMetricFamily(
                "openft_queue_length",
                "Queued jobs the scheduler has not submitted to Ray yet (waiting for a "
                "slot under max_concurrent_jobs or for room on the cluster).")]


@dataclass(frozen=True)
class JobCounts:
    by_status: dict[str, int]
    waiting_to_launch: int
    """``queued`` with no Ray run: what the launch stage picks from
    (:func:`service.jobs.scheduler.launch.launch_queued`)."""


def job_counts(db: Database) -> JobCounts:
    """Jobs per status, and the queued ones without a run, in one query."""
    with db.session() as s:
        rows = s.execute(select(JobRow.status, func.count(), func.count(JobRow.ray_submission_id))
                         .group_by(JobRow.status)).all()
    by_status = {status: total for status, total, _ in rows}
    submitted = {status: with_run for status, _, with_run in rows}
    queued = JobStatus.QUEUED.value
    return JobCounts(by_status, by_status.get(queued, 0) - submitted.get(queued, 0))


class RequestMetrics:
    """ASGI middleware counting requests by route template, method and status.

    Plain ASGI rather than ``BaseHTTPMiddleware``: a streamed chat answer is timed to its
    last byte and passes through untouched.
    """

    def __init__(self, app: ASGIApp, requests: Counter, durations: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.durations = durations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception becomes a 500 outside us

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = route_template(scope)
            self.requests.labels(method, route, str(status)).inc()
            self.durations.labels(method, route).observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The path template of the route that handled the request (the router puts the route
    in the scope), or :data:`UNMATCHED`."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


@dataclass(frozen=True)
class ApiMetrics:
    """One app's registry and what its parts record into; on ``app.state.metrics``."""

    registry: CollectorRegistry
    scheduler: SchedulerMetrics


def install_metrics(app: FastAPI, database: Callable[[], Database | None] | None = None
                    ) -> ApiMetrics:
    """Give ``app`` a registry of its own, the request middleware and ``GET /metrics``
    (unauthenticated, like ``/healthz``: Prometheus scrapes it inside the cluster).

    ``database`` defaults to the one the lifespan opens (``app.state.ctx.db``).
    """
    registry = CollectorRegistry(auto_describe=True)
    for standard in (ProcessCollector, PlatformCollector, GCCollector):
        standard(registry=registry)
    requests = Counter("openft_http_requests", "HTTP requests answered, by route template.",
                       ["method", "route", "status"], registry=registry)
    durations = Histogram("openft_http_request_duration_seconds",
                          "Seconds from a request's arrival to its response's last byte.",
                          ["method", "route"], buckets=HTTP_BUCKETS, registry=registry)
    registry.register(JobsCollector(database or _lifespan_database(app)))
    app.add_middleware(RequestMetrics, requests=requests, durations=durations)
    metrics = ApiMetrics(registry, SchedulerMetrics(registry))
    app.state.metrics = metrics

    @app.get("/metrics", include_in_schema=False)
    def scrape(request: Request) -> Response:
        # Sync: FastAPI runs it in a thread, so the jobs query never blocks the event loop.
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(registry), media_type=content_type)

    return metrics


def _lifespan_database(app: FastAPI) -> Callable[[], Database | None]:
    def database() -> Database | None:
        ctx = getattr(app.state, "ctx", None)
        return ctx.db if ctx is not None else None
    return database

