"""Run ``python -m devstack.launcher`` (what ``make run`` runs) under a test or a bench.

Stopped by PID: SIGTERM to the launcher's group (it stops its children in reverse order),
then whatever it recorded in ``<data_dir>/pids.json`` and left running is stopped (and named in
:attr:`Stack.leftovers`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from devstack.leftovers import stop_leftovers
from devstack.processes import free_ports, served_by, start, wait_until

USER_PORTS = ("OPENFT_PORT", "OPENFT_S3_PORT", "OPENFT_SERVING_PORT")
"""The settings of the ports a stack's users point at: the API, S3 and serving. Ray's ports
are left out on purpose: nothing outside the stack points at them, and the launcher picks free
ones at each start (:func:`devstack.launcher.with_free_ports`)."""


def free_user_ports() -> dict[str, str]:
    """:data:`USER_PORTS`, each on a port free on loopback now: a stack started by a test or a
    bench never collides with ``make run`` or another stack beside it."""
    return dict(zip(USER_PORTS, map(str, free_ports(len(USER_PORTS))), strict=True))


@dataclass
class Stack:
    base_url: str
    api_key: str
    data_dir: Path
    env: dict[str, str]
    launcher_pid: int = 0
    leftovers: list[str] = field(default_factory=list)
    """Children still running after the launcher exited: should stay empty."""


@contextmanager
def running_stack(data_dir: Path, env_overrides: dict[str, str],
                  timeout: float = 900) -> Iterator[Stack]:
    env = dict(os.environ, OPENFT_DATA_DIR=str(data_dir), RAY_AUTH_MODE="disabled",
               **env_overrides)
    port = int(env["OPENFT_PORT"])
    proc = start("launcher", [sys.executable, "-m", "devstack.launcher"], data_dir / "test-logs",
                 env)
    stack: Stack | None = None
    try:
        health = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: served_by(health, proc.pid), "openft API", proc, timeout)
        key = env.get("OPENFT_API_KEYS", "").split("=")[0] or \
            (data_dir / "api_key").read_text().strip()
        stack = Stack(f"http://127.0.0.1:{port}/v1", key, data_dir, env, launcher_pid=proc.pid)
        yield stack
    finally:
        proc.stop(timeout=90)
        left = stop_leftovers(data_dir / "pids.json", grace=0)
        if stack is not None:
            stack.leftovers += left
