"""Which adapters one replica holds, and when it must drop them.

S3 is the only truth about an adapter, for every replica alike: an adapter may be served while
``<prefix>/<model_key>/adapter_config.json`` exists and ``<prefix>/<model_key>/deleted.json``
(written by the API when the model is deleted) does not. A replica re-checks that at most every
``recheck_s`` seconds for each adapter it is asked for, and sweeps the adapters it holds on the
same period, so a deleted adapter stops answering and leaves every replica within ``recheck_s``
without any call reaching each replica (Ray Serve has no broadcast to replicas).

Residency is an LRU of ``capacity`` adapters (the size of Ray Serve's multiplex LRU, which
routes requests to replicas that hold an adapter). An adapter that leaves it is unregistered from
the engine and its local copy forgotten, so using it again downloads it from S3 again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from fastapi import HTTPException

log = logging.getLogger("ray.serve")


class AdapterGone(HTTPException):
    """The adapter is not (or no longer) in S3: OpenAI's ``model_not_found``."""

    def __init__(self, model_id: str) -> None:
        super().__init__(404, f"The model `{model_id}` does not exist.")


Eviction = Literal["lru", "deleted"]
"""Why an adapter left: room for another (least recently used), or deleted from S3."""


class AdapterEvents(Protocol):
    """What residency changes report (``serving.metrics.AdapterMetrics``)."""

    def loaded(self, seconds: float, resident: int) -> None: ...

    def evicted(self, reason: Eviction, resident: int) -> None: ...


class ResidentAdapters:
    """The adapters registered on one replica's engine, kept in step with S3.

    ``exists(model_id)`` asks S3; ``load(model_id)`` downloads and registers an adapter;
    ``unload(model_id)`` unregisters it and forgets its local copy. All three are injected, so
    the bookkeeping is tested without an engine; ``events``, if given, hears of each load
    (timed by ``clock``) and eviction.
    """

    def __init__(
        self,
        capacity: int,
        recheck_s: float,
        exists: Callable[[str], Awaitable[bool]],
        load: Callable[[str], Awaitable[None]],
        unload: Callable[[str], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
        events: AdapterEvents | None = None,
    ) -> None:
        self._capacity = capacity
        self._recheck_s = recheck_s
        self._exists = exists
        self._load = load
        self._unload = unload
        self._clock = clock
        self._events = events
        self._resident: OrderedDict[str, None] = OrderedDict()
        self._checked_at: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def resident(self) -> list[str]:
        """Adapters registered now, least recently used first."""
        return list(self._resident)

    async def use(self, model_id: str) -> None:
        """Make ``model_id`` servable here, or raise ``AdapterGone`` if S3 no longer has it."""
        async with self._lock(model_id):
            await self._confirm(model_id)
            if model_id in self._resident:
                self._resident.move_to_end(model_id)
                return
            started = self._clock()
            await self._load(model_id)
            self._resident[model_id] = None
            log.info("adapter %s loaded from S3", model_id)
            if self._events is not None:
                self._events.loaded(self._clock() - started, len(self._resident))
        while len(self._resident) > self._capacity:
            await self._drop(next(iter(self._resident)), "lru")

    async def sweep(self) -> None:
        """Drop every held adapter that S3 no longer has (one pass)."""
        for model_id in self.resident:
            try:
                async with self._lock(model_id):
                    await self._confirm(model_id)
            except AdapterGone:
                pass

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._recheck_s)
            try:
                await self.sweep()
            except Exception:  # S3 briefly unreachable: keep what we hold, try again later
                log.warning("adapter sweep failed", exc_info=True)

    async def _confirm(self, model_id: str) -> None:
        checked = self._checked_at.get(model_id)
        if checked is not None and self._clock() - checked < self._recheck_s:
            return
        if not await self._exists(model_id):
            self._checked_at.pop(model_id, None)
            if model_id in self._resident:
                await self._drop(model_id, "deleted", locked=True)
            raise AdapterGone(model_id)
        self._checked_at[model_id] = self._clock()

    async def _drop(self, model_id: str, why: Eviction, locked: bool = False) -> None:
        if locked:
            await self._unload(model_id)
        else:
            async with self._lock(model_id):
                await self._unload(model_id)
        self._resident.pop(model_id, None)
        self._checked_at.pop(model_id, None)
        log.info("adapter %s unloaded: %s", model_id, _WHY[why])
        if self._events is not None:
            self._events.evicted(why, len(self._resident))

    def _lock(self, model_id: str) -> asyncio.Lock:
        return self._locks.setdefault(model_id, asyncio.Lock())


_WHY: dict[Eviction, str] = {"lru": "least recently used", "deleted": "deleted from S3"}
