"""``make run`` killed outright, then started again: nothing of the first run is left holding
ports, and the second comes up on the same data dir and serves (the real stack: SeaweedFS, a
Ray head, vLLM under Ray Serve, the API)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.leftovers import RunRecord, stop_leftovers
from devstack.ports import listening_pids
from devstack.processes import (
    ManagedProcess,
    served_by,
    session_pids,
    start,
    wait_until,
)
from devstack.stack import Stack, free_user_ports, running_stack

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]


@pytest.fixture(scope="module")
def stack_env(tiny_model_dir: Path) -> dict[str, str]:
    """Only the ports users point at are pinned; Ray's are picked free at each start."""
    return {**free_user_ports(),
            "OPENFT_DEFAULT_BASE_MODEL": "false",
            "OPENFT_BASE_MODELS": json.dumps({"tiny-llama": str(tiny_model_dir)}),
            "OPENFT_SERVING_KV_CACHE_GIB": "1"}


def launch(data_dir: Path, stack_env: dict[str, str]) -> ManagedProcess:
    """The launcher as :func:`running_stack` starts it, without its cleanup on exit."""
    env = dict(os.environ, OPENFT_DATA_DIR=str(data_dir), RAY_AUTH_MODE="disabled",
               **stack_env)
    proc = start("launcher", [sys.executable, "-m", "devstack.launcher"],
                 data_dir / "test-logs", env)
    health = f"http://127.0.0.1:{stack_env['OPENFT_PORT']}/healthz"
    wait_until(lambda: served_by(health, proc.pid), "openft API", proc, 900)
    return proc


def models(stack: Stack) -> list[str]:
    answer = httpx.get(f"{stack.base_url}/models", timeout=30,
                       headers={"Authorization": f"Bearer {stack.api_key}"})
    answer.raise_for_status()
    return [m["id"] for m in answer.json()["data"]]


def sessions(data_dir: Path) -> dict[str, int]:
    record = RunRecord.read(data_dir / "pids.json")
    assert record is not None
    return {c.name: c.pid for c in record.children}


def watchdog_of(launcher_pid: int) -> int:
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[-1].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == launcher_pid and b"devstack.watchdog" in cmdline:
            return int(entry.name)
    raise AssertionError(f"launcher {launcher_pid} has no watchdog")


def wait_gone(pids: dict[str, int], within: float) -> dict[str, list[int]]:
    """What is still alive of each session after ``within`` seconds (empty: all gone)."""
    deadline = time.monotonic() + within
    while (left := {n: m for n, p in pids.items() if (m := session_pids(p))}) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    # Short: Ray's socket paths live under it.
    path = Path(f"/tmp/oft-{os.getpid()}")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_killed_launcher_takes_its_servers_along_and_the_next_start_comes_up(
        data_dir: Path, stack_env: dict[str, str]) -> None:
    ports = [int(stack_env[n]) for n in ("OPENFT_S3_PORT", "OPENFT_SERVING_PORT")]

    # 1. SIGKILL the launcher alone: the kernel and its watchdog stop everything it started.
    with running_stack(data_dir, stack_env) as first:
        assert models(first) == ["tiny-llama"]
        started = sessions(data_dir)
        os.kill(first.launcher_pid, signal.SIGKILL)
        assert wait_gone(started, within=15) == {}
        assert not any(listening_pids(p) for p in ports)

    # 2. Again, its watchdog killed first: what the kernel leaves (Ray's agents outlive their
    #    raylet) is stopped by the next start, which then serves on the same data dir.
    second = launch(data_dir, stack_env)
    try:
        started = sessions(data_dir)
        os.kill(watchdog_of(second.pid), signal.SIGKILL)
        second.popen.kill()
        second.popen.wait()
        assert "seaweedfs" not in wait_gone(started, within=10)  # PR_SET_PDEATHSIG
        assert started["ray-head"] not in session_pids(started["ray-head"])
        left_over = wait_gone(started, within=0)
    except BaseException:
        stop_leftovers(data_dir / "pids.json", grace=0)
        raise

    log = data_dir / "test-logs" / "launcher.log"
    logged = log.stat().st_size
    with running_stack(data_dir, stack_env) as third:
        assert wait_gone(started, within=0) == {}
        assert models(third) == ["tiny-llama"]
        said = [line for line in log.read_bytes()[logged:].decode().splitlines()
                if "the last run left running" in line]
        assert bool(said) == bool(left_over), (said, left_over)
        began = time.monotonic()
    stop_s = time.monotonic() - began

    # 3. A clean stop (SIGTERM, as Ctrl-C) takes seconds and leaves nothing behind.
    assert third.leftovers == []
    assert stop_s < 15, stop_s
    print(f"left by the second run: {left_over}; the third start said {said}; "
          f"clean stop in {stop_s:.1f}s")
