"""``GET /readyz``: may this replica take traffic? Yes while its database, bucket and Ray
answer.

Kubernetes' readiness probe calls it (without a key: probes carry none). Each check runs in
a thread with a deadline of :data:`CHECK_TIMEOUT_S`, all at once, so an answer comes within
a few seconds whatever hangs; a check that fails or times out makes a 503 in the usual error
envelope (``code: "not_ready"``) naming what is down. Liveness stays ``/healthz``: a replica
whose database is down should leave the Service, not be restarted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from fastapi import Request
from sqlalchemy import make_url, text
from sqlalchemy.exc import ArgumentError

from service.context import AppContext
from service.errors import UpstreamUnavailable

CHECK_TIMEOUT_S = 2.0
"""Each check's deadline; they run concurrently, so the probe answers in about this long."""


class NotReady(UpstreamUnavailable):
    code = "not_ready"


def checks_of(ctx: AppContext) -> dict[str, Callable[[], object]]:
    """What must answer, by the name the response gives it."""
    return {"database": lambda: _select_one(ctx), "s3": ctx.blobs.ping,
            "ray": lambda: ctx.ray.ping(timeout=CHECK_TIMEOUT_S)}


def _select_one(ctx: AppContext) -> None:
    with ctx.db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def run_checks(checks: Mapping[str, Callable[[], object]], secrets: list[str],
                     timeout: float = CHECK_TIMEOUT_S) -> dict[str, str]:
    """``"ok"`` or why not, per check; never raises. ``secrets`` are blanked out of reasons."""

    async def one(check: Callable[[], object]) -> str:
        try:
            await asyncio.wait_for(asyncio.to_thread(check), timeout)
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except Exception as e:  # whatever a driver raises is "down", never a 500
            return _reason(e, secrets)
        return "ok"

    results = await asyncio.gather(*(one(c) for c in checks.values()))
    return dict(zip(checks, results, strict=True))


def _reason(error: Exception, secrets: list[str]) -> str:
    """The first line of the error, short, with no secret in it."""
    cause = getattr(error, "orig", None) or error  # SQLAlchemy wraps the driver's error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    reason = f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
    for secret in secrets:
        reason = reason.replace(secret, "***")
    return reason[:200]


def _secrets(ctx: AppContext) -> list[str]:
    """Values no reason may show. No driver is known to echo one: a second line of defence.
    (One of a few characters would blank out ordinary words instead.)"""
    st = ctx.settings
    try:
        password = make_url(st.resolved_database_url).password
    except ArgumentError:  # the app could not have started with it; still never a 500
        password = None
    values = [password, *(s.get_secret_value() for s in (st.s3_secret_key, st.ray_auth_token)
                          if s is not None)]
    return [str(v) for v in values if v and len(str(v)) >= 4]


async def readyz(request: Request) -> dict[str, object]:
    """200 ``{"status": "ready", "checks": {...}}`` or 503 naming what is down."""
    ctx: AppContext = request.app.state.ctx
    results = await run_checks(checks_of(ctx), _secrets(ctx))
    down = {name: why for name, why in results.items() if why != "ok"}
    if down:
        raise NotReady("not ready: " + "; ".join(f"{n} is down ({why})"
                                                 for n, why in down.items()))
    return {"status": "ready", "checks": results}
