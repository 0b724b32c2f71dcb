"""The API app on a real loopback port, for tests whose client must see the wire: a browser,
a live event stream read as it arrives, a body cut off mid-way."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from devstack.processes import free_port


@contextmanager
def served(app) -> Iterator[str]:
    """The ASGI app on a free loopback port (uvicorn in a thread, lifespan included); yields
    the base URL and stops the server afterwards. Open streams are cut after 5 s of the
    shutdown rather than awaited (a live event stream would hold it forever)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
