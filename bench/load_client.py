"""A bounded HTTP load generator for ``bench/api_load.py``: N concurrent clients, each sending
its next request as soon as the last one is answered, for a fixed time.

It runs in a process of its own (``python -m bench.load_client``, a JSON plan on stdin, a
JSON result on stdout) so its CPU is not the API's, and speaks aiohttp on uvloop, the
cheapest maintained client on this machine: on 2 cores the client competes with the server,
and a slow client would measure itself.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

TIMEOUT_S = 30.0
"""A request not answered in this long counts as an error (``timeout``)."""


@dataclass(frozen=True)
class Request:
    """One kind of request of a scenario, drawn with probability ``weight``."""

    method: str
    path: str
    weight: float = 1.0
    json_body: Any = None
    upload: bytes | None = None
    """Bytes sent as ``file`` in a multipart form with ``purpose=fine-tune``."""
    paths: list[str] = field(default_factory=list)
    """Draw the path from these instead (``GET`` of one of many jobs)."""


@dataclass
class Tally:
    """What ended after the warm-up: a request that started in it and hung (a deadlocked
    server) still counts, as an error or a late answer."""

    since: float
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        if time.perf_counter() >= self.since:
            self.errors[what] = self.errors.get(what, 0) + 1

    def answered(self, started: float) -> None:
        if (now := time.perf_counter()) >= self.since:
            self.latencies.append(now - started)


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5)
    2.0
    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.99)
    4.0
    """
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 1))  # ceil(n * q), at least 1
    return sorted_values[int(rank) - 1]


def summary(tally: Tally, seconds: float) -> dict[str, Any]:
    """``seconds``: from the warm-up's end until the last request in flight ended, so a
    stalled server's late answers lower its rate instead of vanishing."""
    ok = sorted(tally.latencies)
    return {
        "requests": len(ok), "seconds": seconds, "rps": len(ok) / seconds if seconds else 0.0,
        "p50_ms": percentile(ok, 0.50) * 1000, "p99_ms": percentile(ok, 0.99) * 1000,
        "errors": dict(sorted(tally.errors.items())),
    }


async def _one(session: aiohttp.ClientSession, base: str, req: Request, rng: random.Random,
               tally: Tally) -> None:
    path = rng.choice(req.paths) if req.paths else req.path
    kwargs: dict[str, Any] = {}
    if req.upload is not None:
        form = aiohttp.FormData()
        form.add_field("purpose", "fine-tune")
        form.add_field("file", req.upload, filename="bench.jsonl",
                       content_type="application/jsonl")
        kwargs["data"] = form
    elif req.json_body is not None:
        kwargs["json"] = req.json_body
    started = time.perf_counter()
    try:
        async with session.request(req.method, base + path, **kwargs) as resp:
            body = await resp.read()
            status = resp.status
            enveloped = body.startswith(b'{"error"')
    except TimeoutError:
        tally.error("timeout")
        return
    except aiohttp.ClientError as e:
        tally.error(type(e).__name__)
        return
    if status >= 400:
        tally.error(f"{status}{'' if enveloped else ' plain'}")
    else:
        tally.answered(started)


async def run(plan: dict[str, Any]) -> dict[str, Any]:
    """Warm up, then measure ``plan["seconds"]`` of ``plan["concurrency"]`` clients."""
    requests = [Request(**r) if isinstance(r, dict) else r for r in plan["requests"]]
    for r in requests:
        if isinstance(r.upload, str):
            object.__setattr__(r, "upload", r.upload.encode())
    weights = [r.weight for r in requests]
    concurrency, seconds = int(plan["concurrency"]), float(plan["seconds"])
    warmup = float(plan.get("warmup_s", 1.0))
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {"Authorization": f"Bearer {plan['api_key']}"}
    start = time.perf_counter()
    stop_at = start + warmup + seconds
    tally = Tally(since=start + warmup)

    async def client(i: int) -> None:
        rng = random.Random(i)
        while time.perf_counter() < stop_at:
            await _one(session, plan["base_url"], rng.choices(requests, weights)[0], rng, tally)

    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
        await asyncio.gather(*(client(i) for i in range(concurrency)))
    return summary(tally, max(seconds, time.perf_counter() - tally.since))


def main() -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(json.load(sys.stdin)))))


if __name__ == "__main__":
    main()
