"""An unclean stop leaves nothing behind: what a killed launcher started dies with it, and
what it recorded is stopped before the next start, never a stranger that got its PID."""

from __future__ import annotations

import doctest
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import devstack.leftovers
from devstack.leftovers import (
    LauncherRunning,
    RecordedProcess,
    RunRecord,
    start_time,
    stop_leftovers,
)
from devstack.ports import PortTaken, require_free
from devstack.processes import ManagedProcess, session_pids, start

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc, as the launcher does")

# A session leader with a member in a process group of its own, as Ray's raylet and the
# agents it starts (which outlive it): prints the member's PID, then waits.
LEADER_AND_MEMBER = textwrap.dedent("""
    import subprocess, sys, time
    member = subprocess.Popen(["sleep", "300"], process_group=0)
    print(member.pid, flush=True)
    time.sleep(300)
""")


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[ManagedProcess]]:
    procs: list[ManagedProcess] = []
    yield procs
    for proc in procs:
        proc.kill()


def _start(started: list[ManagedProcess], tmp_path: Path, name: str,
           argv: list[str]) -> ManagedProcess:
    proc = start(name, argv, tmp_path / "logs", None)
    started.append(proc)
    return proc


def _gone(pids: list[int], within: float) -> bool:
    deadline = time.monotonic() + within
    while any(start_time(p) is not None and _running(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in "ZX"


def _dead_launcher(started: list[ManagedProcess], tmp_path: Path) -> RecordedProcess:
    launcher = _start(started, tmp_path, "launcher", ["sleep", "300"])
    recorded = RecordedProcess.of("launcher", launcher.pid)
    launcher.kill()
    return recorded


def test_a_dead_launchers_sessions_are_stopped_members_in_groups_of_their_own_too(
        started, tmp_path) -> None:
    plain = _start(started, tmp_path, "seaweedfs", ["sleep", "300"])
    ray = _start(started, tmp_path, "ray-head",
                 [sys.executable, "-c", LEADER_AND_MEMBER])
    member = _member_of(ray)
    record = RunRecord(_dead_launcher(started, tmp_path),
                       [RecordedProcess.of("seaweedfs", plain.pid),
                        RecordedProcess.of("ray-head", ray.pid)])
    ray.popen.kill()  # the raylet died; its agent did not
    ray.popen.wait()
    record.write(tmp_path / "pids.json")

    assert stop_leftovers(tmp_path / "pids.json", grace=2) == ["seaweedfs", "ray-head"]

    assert _gone([plain.pid, member], within=1)
    assert session_pids(ray.pid) == []
    assert stop_leftovers(tmp_path / "pids.json") == []  # nothing twice


def _member_of(proc: ManagedProcess) -> int:
    """The one other process of ``proc``'s session, once it has started it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if others := [p for p in session_pids(proc.pid) if p != proc.pid]:
            return others[0]
        time.sleep(0.05)
    raise AssertionError(f"{proc.name} started no member:\n{proc.log_tail()}")


def test_a_running_launcher_keeps_what_it_started(started, tmp_path) -> None:
    launcher = _start(started, tmp_path, "launcher", ["sleep", "300"])
    child = _start(started, tmp_path, "seaweedfs", ["sleep", "300"])
    RunRecord(RecordedProcess.of("launcher", launcher.pid),
              [RecordedProcess.of("seaweedfs", child.pid)]).write(tmp_path / "pids.json")

    with pytest.raises(LauncherRunning) as running:
        stop_leftovers(tmp_path / "pids.json")

    assert running.value.launcher.pid == launcher.pid
    assert child.alive()


def test_a_recycled_pid_is_left_alone(started, tmp_path) -> None:
    """The PID recorded for a child now names another program: a different start time."""
    stranger = _start(started, tmp_path, "stranger", ["sleep", "300"])
    launcher = RecordedProcess("launcher", stranger.pid, start_time(stranger.pid) - 1)
    child = RecordedProcess("seaweedfs", stranger.pid, start_time(stranger.pid) - 1)
    RunRecord(launcher, [child]).write(tmp_path / "pids.json")

    assert stop_leftovers(tmp_path / "pids.json") == []

    time.sleep(0.2)
    assert stranger.alive()


def test_no_record_or_an_old_one_stops_nothing(tmp_path) -> None:
    assert stop_leftovers(tmp_path / "pids.json") == []
    (tmp_path / "pids.json").write_text('{"seaweedfs": 1}')  # before start times were kept
    assert stop_leftovers(tmp_path / "pids.json") == []


PARENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from devstack.leftovers import RecordedProcess, RunRecord
    from devstack.processes import session_pids, start
    from devstack.watchdog import watch_over_me

    root, watched = Path(sys.argv[1]), sys.argv[2] == "watched"
    child = start("child", [sys.executable, "-c", sys.argv[3]], root / "logs")
    while len(session_pids(child.pid)) < 2:
        time.sleep(0.05)
    RunRecord(RecordedProcess.of("launcher", __import__("os").getpid()),
              [RecordedProcess.of("child", child.pid)]).write(root / "pids.json")
    if watched:
        watch_over_me(root / "pids.json", root / "logs" / "watchdog.log")
    print(*session_pids(child.pid), flush=True)
    time.sleep(300)
""")


def _parent(tmp_path: Path, watched: bool) -> tuple[subprocess.Popen[str], list[int], int]:
    """A stand-in launcher; returns it, its child's session and the child's PID."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path), "watched" if watched else "bare",
         LEADER_AND_MEMBER], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).parents[2])
    assert parent.stdout is not None
    session = [int(p) for p in parent.stdout.readline().split()]
    leader = RunRecord.read(tmp_path / "pids.json").children[0].pid  # type: ignore[union-attr]
    return parent, session, leader


def test_a_sigkilled_parent_takes_the_process_it_started_along(tmp_path) -> None:
    """PR_SET_PDEATHSIG: the kernel kills the child the moment its parent dies."""
    parent, session, leader = _parent(tmp_path, watched=False)
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _gone([leader], within=2)
    finally:
        stop_leftovers(tmp_path / "pids.json", grace=0)


def test_a_sigkilled_launchers_watchdog_stops_the_rest_of_each_session(tmp_path) -> None:
    """What the kernel does not kill (a member in a group of its own, as Ray's agents)
    the watchdog stops, within seconds of the launcher's death."""
    parent, session, leader = _parent(tmp_path, watched=True)
    try:
        assert len(session) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _gone(session, within=5), (tmp_path / "logs" / "watchdog.log").read_text()
    finally:
        stop_leftovers(tmp_path / "pids.json", grace=0)


def test_a_taken_port_is_refused_naming_its_holder() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]

        with pytest.raises(PortTaken) as taken:
            require_free(port, "SeaweedFS S3", "OPENFT_S3_PORT")

    message = str(taken.value)
    assert f"port {port} (SeaweedFS S3)" in message and "OPENFT_S3_PORT" in message
    assert f"pid {os.getpid()} (" in message and "pytest" in message
    require_free(port, "SeaweedFS S3")  # free again once closed


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(devstack.leftovers).failed == 0
