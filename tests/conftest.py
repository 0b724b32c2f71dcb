"""Shared fixtures: real SeaweedFS, a real local Ray head and a tiny model, stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.processes import (
    ManagedProcess,
    free_port,
    free_ports,
    start_ray_head,
    start_seaweedfs,
)

S3_ACCESS_KEY = "test-access"
S3_SECRET_KEY = "test-secret"
S3_BUCKET = "openft-test"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (a CI time-out, ``kill <pid>``) unwinds the run like Ctrl-C, so the fixtures
    below still stop the Ray heads, SeaweedFS and API processes they started; by default it
    ends pytest at once and leaves them all running."""
    signal.signal(signal.SIGTERM, _interrupt)


SLOW_PHASE_S = 60.0


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Name every test phase that takes a minute or more as it ends. CI's only record is its
    printed output, and a run stopped by CI's time limit never reaches ``--durations``; this
    line says where the time went even then."""
    if report.duration >= SLOW_PHASE_S:
        print(f"\n[slow] {report.duration:6.0f} s  {report.when:8}  {report.nodeid}", flush=True)


# Ray Train reports faster with a short health-check interval.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    process: ManagedProcess

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def blobs(self):
        """The bucket as the API reaches it (what ``service.base_models.register`` takes)."""
        from service.storage import BlobStore

        return BlobStore(self.endpoint_url, self.bucket, self.access_key, self.secret_key)

    @property
    def env(self) -> dict[str, str]:
        """The AWS_* variables a training or serving process needs to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


@dataclass
class RayHead:
    dashboard_url: str
    gcs_address: str
    process: ManagedProcess
    temp_dir: Path
    """Ray's ``--temp-dir``: sessions and their logs (``session_latest/logs``)."""


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    root = tmp_path_factory.mktemp("seaweedfs")
    port = free_port()
    proc = start_seaweedfs(root / "data", port, S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY, root)
    try:
        yield S3Server(f"http://127.0.0.1:{port}", S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY, proc)
    finally:
        proc.stop()


@contextmanager
def s3_ray_head(root: Path, s3_server: S3Server) -> Iterator[RayHead]:
    """A Ray head with 4 CPUs under ``root`` (short: Ray's socket paths live there) whose
    workers (training, serving replicas) reach the test S3 server; stopped by PID, and its
    folder (sessions, logs) removed."""
    gcs_port, dash_port = free_ports(2)
    env = dict(os.environ, **s3_server.env)
    proc = start_ray_head(root, gcs_port, dash_port, num_cpus=4, log_dir=root, env=env)
    try:
        yield RayHead(f"http://127.0.0.1:{dash_port}", f"127.0.0.1:{gcs_port}", proc, root)
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_head(s3_server: S3Server) -> Iterator[RayHead]:
    with s3_ray_head(Path("/tmp") / f"ray-{os.getpid()}", s3_server) as head:
        yield head


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from devstack.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
