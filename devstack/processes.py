"""Start and stop the embedded servers (SeaweedFS, Ray head) by process group, never by name.

Both ``make run`` and the test fixtures use these, so a server started for a test is stopped
the same way as one started for a user: by the PID of the group it was started in.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ManagedProcess:
    """A child started in its own session, so signalling its group reaches its children too."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the group, then SIGKILL what is left after ``timeout`` seconds."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.popen.poll() is not None and not _group_alive(self.popen.pid):
                    return
                time.sleep(0.1)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(
    name: str, argv: list[str], log_dir: Path, env: Mapping[str, str] | None = None
) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    popen = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    log.close()
    return ManagedProcess(name=name, popen=popen, log_path=log_path)


def wait_until(check, what: str, proc: ManagedProcess | None, timeout: float) -> None:
    """Poll ``check()`` until true; fail fast with the log tail if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.log_tail()}")
        time.sleep(0.3)
    tail = proc.log_tail() if proc else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback only
            return 200 <= r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (urllib.error.URLError, OSError):
        return False


def served_by(url: str, pid: int) -> bool:
    """True once ``url`` (a ``/healthz``) answers and names ``pid`` as the process answering.

    Guards against a port that another process took between choosing and binding it.
    """
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback only
            return json.loads(r.read()).get("pid") == pid
    except (urllib.error.URLError, OSError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def venv_bin(name: str) -> str:
    """A console script of this interpreter's environment (``weed``, ``ray``)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found beside {sys.executable} or on PATH")
    return found


def start_seaweedfs(
    data_dir: Path, port: int, bucket: str, access_key: str, secret_key: str, log_dir: Path
) -> ManagedProcess:
    """SeaweedFS ``weed mini``: a real S3 server that keeps its data in ``data_dir``.

    Its other listeners (master, volume, filer, ...) get free ports of their own so several
    instances (tests, a dev stack) can run side by side.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    argv = [
        venv_bin("weed"), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={port}", f"-bucket={bucket}",
        f"-master.port={free_port()}", f"-volume.port={free_port()}",
        f"-filer.port={free_port()}", f"-webdav.port={free_port()}",
    ]
    proc = start("seaweedfs", argv, log_dir, env)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/"), "SeaweedFS S3", proc, 60)
    return proc


def start_ray_head(
    temp_dir: Path, gcs_port: int, dashboard_port: int, num_cpus: int, log_dir: Path,
    env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    """A local Ray head on loopback with the dashboard (it serves the Jobs API)."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        venv_bin("ray"), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
        f"--num-cpus={num_cpus}", "--num-gpus=0",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        # Every other listener on a free port too: Ray's defaults (agent 52365, metrics, ...)
        # collide with any other Ray on the host, and the Jobs API then has no agent.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
    ]
    full_env = dict(env if env is not None else os.environ)
    full_env.setdefault("RAY_AUTH_MODE", "disabled")
    proc = start("ray-head", argv, log_dir, full_env)
    wait_until(
        lambda: http_ok(f"http://127.0.0.1:{dashboard_port}/api/version"),
        "Ray dashboard", proc, 120,
    )
    return proc
