"""What a launcher started, written down so that an unclean stop leaves nothing running.

The launcher records itself and each child it starts in ``<data_dir>/pids.json``. When it
dies without stopping them (SIGKILL, a closed terminal, a crash), two things read that record
and stop what lives on: its watchdog (:mod:`devstack.watchdog`) at once, and the next
``make run`` before it binds any port. Each process is recorded with its start time, so a
PID the kernel has since given to another program is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from devstack.processes import session_pids


@dataclass(frozen=True)
class RecordedProcess:
    name: str
    pid: int
    start_time: int
    """When the process started, in clock ticks since boot (``/proc/<pid>/stat``)."""

    @classmethod
    def of(cls, name: str, pid: int) -> RecordedProcess:
        return cls(name, pid, start_time(pid) or 0)

    def running(self) -> bool:
        """Still the process that was recorded (not a recycled PID), and not exited."""
        return _stat(self.pid) == ("running", self.start_time)


@dataclass
class RunRecord:
    launcher: RecordedProcess
    children: list[RecordedProcess] = field(default_factory=list)
    """Each the leader of a session of its own (:func:`devstack.processes.start`)."""
    ray_temp_dir: str | None = None
    """A temp dir outside the data dir the launcher made for Ray, removed with its head."""

    def write(self, path: Path) -> None:
        """Replace ``path`` at once: a reader never sees half a record."""
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(self)))
        partial.replace(path)

    @classmethod
    def read(cls, path: Path) -> RunRecord | None:
        """The record at ``path``; None if there is none or it is not one (an older
        launcher wrote ``{name: pid}`` without start times: those PIDs cannot be trusted)."""
        try:
            raw = json.loads(path.read_text())
            return cls(RecordedProcess(**raw["launcher"]),
                       [RecordedProcess(**c) for c in raw["children"]],
                       raw.get("ray_temp_dir"))
        except (OSError, ValueError, KeyError, TypeError):
            return None


class LauncherRunning(Exception):
    """The launcher that wrote the record is alive: what it started is not left over."""

    def __init__(self, launcher: RecordedProcess) -> None:
        super().__init__(f"openft launcher pid {launcher.pid} is running")
        self.launcher = launcher


def stop_leftovers(path: Path, grace: float = 5.0) -> list[str]:
    """Stop every session the launcher recorded in ``path`` left running; return their names.

    Raises :class:`LauncherRunning` while that launcher lives. A session whose leader is gone
    may still hold members (Ray's agents outlive their raylet); those are stopped too: Linux
    does not hand out a PID again while it still names a session, so they are ours.
    """
    record = RunRecord.read(path)
    if record is None:
        return []
    if record.launcher.running():
        raise LauncherRunning(record.launcher)
    stopped = [child.name for child in record.children if _stop_session(child, grace)]
    if record.ray_temp_dir:
        shutil.rmtree(record.ray_temp_dir, ignore_errors=True)
    return stopped


def _stop_session(child: RecordedProcess, grace: float) -> bool:
    now = start_time(child.pid)
    if now is not None and now != child.start_time:
        return False  # the PID is another program's now: the session it led has ended
    members = [pid for pid in session_pids(child.pid)
               if (start_time(pid) or 0) >= child.start_time]
    if not members:
        return False
    _stop_pids(members, grace)
    return True


def _stop_pids(pids: list[int], grace: float) -> None:
    """SIGTERM ``pids``, and SIGKILL those still there after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while (pids := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pids:
            return


def _alive(pid: int) -> bool:
    return (_stat(pid) or ("exited",))[0] == "running"


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (exited or not); None if there is
    no such process.

    >>> start_time(os.getpid()) == start_time(os.getpid()) is not None
    True
    """
    stat = _stat(pid)
    return None if stat is None else stat[1]


def _stat(pid: int) -> tuple[str, int] | None:
    """``("running" or "exited", start time)`` from Linux's ``/proc/<pid>/stat``; an exited
    process stays there until its parent reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = stat.rsplit(")", 1)[-1].split()
    return ("exited" if fields[0] in "ZX" else "running"), int(fields[19])
