"""Start and stop the embedded servers (SeaweedFS, Ray nodes) by process group, never by name.

Both ``make run`` and the test fixtures use these, so a server started for a test is stopped
the same way as one started for a user: by the PID of the group it was started in.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from devstack.ports import require_free


@dataclass
class ManagedProcess:
    """A child started in its own session, so signalling its group reaches its children too.

    Not all of them: Ray's raylet puts each worker in a process group of its own (within the
    same session), so stopping and killing also sweep the session.
    """

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the group, then SIGKILL what is left after ``timeout`` seconds; then give
        the rest of the session (workers in groups of their own) 5 s to follow, and SIGKILL
        whatever has not."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            if _wait_for(lambda: self.popen.poll() is not None
                         and not _group_alive(self.popen.pid), wait):
                break
        if not _wait_for(lambda: not session_pids(self.popen.pid), 5.0):
            self.kill()

    def kill(self) -> None:
        """SIGKILL every process of the session at once, as when a machine or pod is lost:
        nothing gets to clean up."""
        deadline = time.monotonic() + 10  # a process stuck in the kernel dies when it leaves
        while (members := session_pids(self.popen.pid)) and time.monotonic() < deadline:
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def session_pids(sid: int) -> list[int]:
    """The live processes of session ``sid`` (read from Linux's ``/proc``; none elsewhere).

    A child started by :func:`start` leads its own session and everything it starts stays
    in it, whatever process group they move to, unless they start a session themselves.
    """
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return []
    members = []
    for name in entries:
        try:
            if os.getsid(int(name)) == sid and not _zombie(name):
                members.append(int(name))
        except OSError:
            continue
    return members


def _zombie(pid: str) -> bool:
    """An exited process its parent has not reaped yet: signals cannot end it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _wait_for(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


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
    """Run ``argv`` in a session of its own, its output in ``<log_dir>/<name>.log``.

    Started from the main thread on Linux, the child also dies with this process (a
    SIGKILL, a closed terminal): see :func:`die_with_parent`.
    """
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
        preexec_fn=die_with_parent(),  # noqa: PLW1509 - it only calls prctl
    )
    log.close()
    return ManagedProcess(name=name, popen=popen, log_path=log_path)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when this process dies, so a
    SIGKILLed launcher leaves no server behind holding its ports (Ray does the same for
    its own children: ``ray._private.utils.set_kill_on_parent_death_linux``).

    Linux sends that signal when the *thread* that started the child exits: only children
    of the main thread get it (tests start Ray nodes from pool threads that end at once).
    """
    if not sys.platform.startswith("linux") or \
            threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up in the parent, called in the child
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal us
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


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


def ready_or_stopped(proc: ManagedProcess, check, what: str, timeout: float) -> ManagedProcess:
    """``proc`` once ``check()`` holds; stopped (by its group) when it never does. The caller
    gets no process to stop when a start fails, so one that is half up must not live on."""
    try:
        wait_until(check, what, proc, timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


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


def ray_node_alive(dashboard_url: str, token: str | None = None) -> bool:
    """True once Ray's state API lists a node ALIVE: the head's raylet registered with its GCS.

    The dashboard answers seconds before that, and a raylet that never registers (its GCS
    overloaded on a busy machine) ends ``ray start --block`` while the GCS and dashboard live
    on: a cluster that answers HTTP and can run nothing. A head with token auth is asked with
    ``token``; one that refuses the caller anyway (a token Ray read from its own file) can only
    be seen to answer, so that counts.
    """
    query = "filter_keys=state&filter_predicates=%3D&filter_values=ALIVE&limit=1"
    request = urllib.request.Request(f"{dashboard_url}/api/v0/nodes?{query}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:  # noqa: S310 - loopback only
            return bool(json.loads(r.read())["data"]["result"]["result"])
    except urllib.error.HTTPError as e:
        return e.code in (401, 403)
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int, avoid: Collection[int] = ()) -> list[int]:
    """``n`` distinct free ports, none of them in ``avoid``.

    All held open until every one is chosen: asked one at a time, the OS may hand a port it
    just gave back out again, and a server given the same port for two listeners refuses to
    start (Ray: "trying to use a port number ... used by other components").
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port not in avoid:
                ports.append(port)
        return ports
    finally:
        for s in held:
            s.close()


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
    require_free(port, "SeaweedFS S3")
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    master, volume, filer, webdav = free_ports(4, avoid={port})
    argv = [
        venv_bin("weed"), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={port}", f"-bucket={bucket}",
        f"-master.port={master}", f"-volume.port={volume}",
        f"-filer.port={filer}", f"-webdav.port={webdav}",
        # Catalog servers openft does not use, on fixed ports (8181, 9101) by default: a
        # second SeaweedFS on the machine (a test's beside `make run`'s) would exit on them.
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]
    proc = start("seaweedfs", argv, log_dir, env)
    return ready_or_stopped(
        proc, lambda: bucket_answers(f"http://127.0.0.1:{port}", bucket, access_key, secret_key),
        f"SeaweedFS S3 and its bucket {bucket!r}", 60)


def bucket_answers(endpoint_url: str, bucket: str, access_key: str, secret_key: str) -> bool:
    """True once a signed ``HeadBucket`` finds ``bucket``.

    ``weed mini`` answers S3 on its port about half a second before the bucket named by
    ``-bucket`` exists: a caller let in on the port alone got a 404 for the bucket, and its
    ``CreateBucket`` then met ``BucketAlreadyOwnedByYou``.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1",
                      aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                      config=Config(connect_timeout=2, read_timeout=2,
                                    retries={"max_attempts": 1}))
    try:
        s3.head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError):
        return False
    return True


def detected_gpus() -> int:
    """GPUs on this machine, as ``nvidia-smi -L`` lists them (0 without the command).

    ``make run`` on a GPU box declares them to Ray; otherwise no job or replica asking for a
    GPU could ever be placed.
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return gpu_count(out)


def gpu_count(nvidia_smi_l: str) -> int:
    """The GPUs in ``nvidia-smi -L``'s output: one ``GPU <n>: ...`` line each (MIG devices
    are indented lines under their GPU and are not counted).

    >>> gpu_count("GPU 0: NVIDIA H100 (UUID: GPU-1)\\n  MIG 1g.10gb Device 0: (UUID: MIG-1)\\n"
    ...           "GPU 1: NVIDIA H100 (UUID: GPU-2)\\n")
    2
    >>> gpu_count("No devices were found\\n")
    0
    """
    return sum(1 for line in nvidia_smi_l.splitlines() if line.startswith("GPU "))


NODE_LISTENERS = ("--node-manager-port", "--dashboard-agent-listen-port",
                  "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                  "--metrics-export-port", "--object-manager-port")
HEAD_LISTENERS = ("--ray-client-server-port", *NODE_LISTENERS)


def _listener_ports(flags: tuple[str, ...], avoid: Collection[int] = ()) -> dict[str, int]:
    """Every listener of a node besides the GCS and dashboard, each on its own free port:
    Ray's defaults (agent 52365, metrics, ...) collide with any other Ray node on the host,
    and the Jobs API then has no agent.

    >>> ports = _listener_ports(HEAD_LISTENERS, avoid={6380})
    >>> len(set(ports.values())) == len(HEAD_LISTENERS) and 6380 not in ports.values()
    True
    """
    return dict(zip(flags, free_ports(len(flags), avoid), strict=True))


def _flags(ports: dict[str, int]) -> list[str]:
    return [f"{flag}={port}" for flag, port in ports.items()]


def _ray_env(env: Mapping[str, str] | None) -> dict[str, str]:
    full_env = dict(env if env is not None else os.environ)
    full_env.setdefault("RAY_AUTH_MODE", "disabled")
    # On SIGTERM, Ray 2.60 first drains the node for up to 30 s, waiting for Serve to move
    # replicas elsewhere; these nodes have nowhere to move them, so stopping took 20-35 s.
    full_env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    return full_env


def start_ray_head(
    temp_dir: Path, gcs_port: int, dashboard_port: int, num_cpus: int, log_dir: Path,
    env: Mapping[str, str] | None = None, num_gpus: int | None = None,
) -> ManagedProcess:
    """A local Ray head with the dashboard on loopback (it serves the Jobs API).

    ``num_cpus=0`` makes a head that runs no work, as on KubeRay, where tasks and replicas
    go to worker nodes (:func:`start_ray_worker`). ``num_gpus`` defaults to the GPUs
    :func:`detected_gpus` finds.
    """
    require_free(gcs_port, "Ray GCS")
    require_free(dashboard_port, "Ray dashboard")
    temp_dir.mkdir(parents=True, exist_ok=True)
    gpus = detected_gpus() if num_gpus is None else num_gpus
    argv = [
        venv_bin("ray"), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
        f"--num-cpus={num_cpus}", f"--num-gpus={gpus}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *_flags(_listener_ports(HEAD_LISTENERS, avoid={gcs_port, dashboard_port})),
    ]
    full_env = _ray_env(env)
    proc = start("ray-head", argv, log_dir, full_env)
    token = full_env.get("RAY_AUTH_TOKEN") if full_env["RAY_AUTH_MODE"] == "token" else None
    return ready_or_stopped(
        proc, lambda: ray_node_alive(f"http://127.0.0.1:{dashboard_port}", token),
        "the Ray head's node to be alive", 120)


def start_ray_worker(
    address: str, temp_dir: Path, num_cpus: int, log_dir: Path,
    env: Mapping[str, str] | None = None, num_gpus: int | None = None,
    resources: Mapping[str, float] | None = None, name: str = "ray-worker",
) -> ManagedProcess:
    """A Ray worker node joining the head at ``address`` (its GCS, ``host:port``), as a
    KubeRay worker pod runs ``ray start --address``: its own process group (stopping or
    killing it is losing the node), temp dir, resources and environment (``env`` is what
    the pod spec gives the node: its model cache, the bucket's credentials), every listener
    on a free port. ``name`` names its log file.

    Ray replaces a loopback ``--node-ip-address`` with the host's own address (one that
    other machines could reach) and binds some listeners (GCS, metrics) on all interfaces,
    head included: the host's firewall, not these flags, keeps them private.
    Returns once the node's raylet listens; the GCS lists the node moments later.
    """
    temp_dir.mkdir(parents=True, exist_ok=True)
    gpus = detected_gpus() if num_gpus is None else num_gpus
    ports = _listener_ports(NODE_LISTENERS)
    node_manager_port = ports["--node-manager-port"]
    argv = [
        venv_bin("ray"), "start", f"--address={address}", "--block",
        "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", f"--num-gpus={gpus}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
        *_flags(ports),
        *([f"--resources={json.dumps(dict(resources))}"] if resources else []),
    ]
    proc = start(name, argv, log_dir, _ray_env(env))
    return ready_or_stopped(proc, lambda: port_open(node_manager_port),
                            f"Ray worker node {name}", 120)
