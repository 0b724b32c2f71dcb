"""A PostgreSQL server of a test's own (``initdb`` in a temp dir, a free port), so the test can
stop and start it without touching the machine's shared server that other tests use."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack.processes import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or \
        ([p] if (p := shutil.which(name)) else [])
    if not found:
        raise FileNotFoundError(f"PostgreSQL's {name} is not installed")
    return found[-1]


def _as_owner(argv: list[str], owner: str | None) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the ``postgres`` user then."""
    return ["runuser", "-u", owner, "--", *argv] if owner else argv


@dataclass
class PrivatePostgres:
    data: Path
    port: int
    owner: str | None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
                                  *args], self.owner), check=True, capture_output=True)

    def start(self) -> None:
        self._ctl("-l", str(self.data / "server.log"), "-o",
                  f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as in a restart or a failover."""
        self._ctl("-m", "fast", "stop")


@contextmanager
def private_postgres(root: Path) -> Iterator[PrivatePostgres]:
    owner = "postgres" if os.geteuid() == 0 else None
    root.mkdir(parents=True, exist_ok=True)
    data = root / "pgdata"
    if owner:
        pw = pwd.getpwnam(owner)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    subprocess.run(_as_owner([_bin("initdb"), "-D", str(data), "-U", "postgres",
                              "--auth=trust", "-E", "UTF8"], owner),
                   check=True, capture_output=True)
    server = PrivatePostgres(data, free_port(), owner)
    server.start()
    try:
        yield server
    finally:
        try:
            server._ctl("-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(root, ignore_errors=True)
