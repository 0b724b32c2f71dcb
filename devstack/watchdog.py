"""Stops what a launcher started as soon as the launcher is gone, however it went.

``python -m devstack.watchdog PIDS_JSON LAUNCHER_PID`` reads its stdin, a pipe whose other end
only the launcher holds: the kernel closes it when the launcher exits, SIGKILL included. It
then runs the cleanup the next start would run (:func:`devstack.leftovers.stop_leftovers`).
The kernel already SIGKILLs each child's session leader (:func:`devstack.processes.start`);
this catches what such a leader leaves behind: Ray's dashboard and runtime-env agents outlive
their raylet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from devstack.leftovers import LauncherRunning, RunRecord, stop_leftovers


def watch_over_me(pids_json: Path, log_path: Path) -> None:
    """Start this process's watchdog. Its end of the pipe stays open, unseen by any other
    child (pipes are not inherited), until this process exits."""
    read_end, _write_end = os.pipe()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", "devstack.watchdog", str(pids_json), str(os.getpid())],
            stdin=read_end, stdout=log, stderr=subprocess.STDOUT,
            # Not in the launcher's group: Ctrl-C and a closed terminal must not reach it.
            start_new_session=True,
        )
    os.close(read_end)


def main(argv: list[str]) -> None:
    pids_json, launcher_pid = Path(argv[0]), int(argv[1])
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns at end of file: the launcher has exited
    record = RunRecord.read(pids_json)
    if record is None or record.launcher.pid != launcher_pid:
        return  # a newer launcher's record: not ours to act on
    try:
        stopped = stop_leftovers(pids_json)
    except LauncherRunning:
        return
    if stopped:
        print(f"openft watchdog: launcher {launcher_pid} left {', '.join(stopped)} running; "
              "stopped them", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
