"""Ports the stack is told to use: taken ones are refused by name, with who holds them.

A server that cannot bind its port may still look up: whatever holds the port answers the
readiness check (a SeaweedFS, a Ray dashboard or a Serve proxy left by another run), and the
stack goes on talking to a stranger. So each configured port is checked before its server
starts, and the launcher stops with the port, the setting and the holder's command line.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


class PortTaken(RuntimeError):
    """A port a server was told to use is held by another process."""

    def __init__(self, port: int, what: str, setting: str | None = None) -> None:
        holder = describe_holder(port) or "another process (not visible to this user)"
        fix = f"stop it, or set {setting} to a free port" if setting else "stop it"
        super().__init__(f"openft: port {port} ({what}) is taken by {holder}: {fix}")
        self.port = port


def require_free(port: int, what: str, setting: str | None = None,
                 host: str = "127.0.0.1") -> None:
    """Raise :class:`PortTaken` unless a server could listen on ``host:port`` now.

    ``SO_REUSEADDR`` as servers set it: connections of a stopped server in TIME_WAIT do not
    count, a listener does.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise PortTaken(port, what, setting) from None


def describe_holder(port: int) -> str | None:
    """``pid 123 (weed mini -dir=...)`` for the process listening on ``port``, read from
    Linux's ``/proc``; None when it cannot be seen (another user's, not Linux)."""
    for pid in listening_pids(port):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        return f"pid {pid} ({cmdline.decode(errors='replace').strip()[:120]})"
    return None


def listening_pids(port: int) -> list[int]:
    """Processes holding a socket that listens on TCP ``port`` (any address)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in inodes:
                        pids.append(int(entry.name))
                        break
    return pids


def _listening_inodes(port: int) -> set[str]:
    """``socket:[inode]`` of each listening socket on ``port`` in ``/proc/net/tcp{,6}``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{inode}]")
    return inodes
