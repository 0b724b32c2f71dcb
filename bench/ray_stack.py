"""A bucket and a Ray cluster for benches that run training without the API.

SeaweedFS and a Ray head (declaring the machine's GPUs, as ``make run`` does), stopped by
process group; and the few Jobs API and bucket calls a bench makes against them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Stack:
    endpoint_url: str
    bucket: str
    dashboard_url: str
    gcs_address: str
    env: dict[str, str]
    """AWS_* for the bucket, as the Ray head's processes (and the bench) see it."""
    root: Path


@contextmanager
def openft_stack(root: Path, num_cpus: int | None = None,
                 extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """SeaweedFS plus a Ray head with ``num_cpus`` (default: the machine's) and its GPUs."""
    from devstack.processes import free_port, free_ports, start_ray_head, start_seaweedfs

    bucket, port = "openft-bench", free_port()
    s3_env = {
        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
    }
    weed = start_seaweedfs(root / "s3", port, bucket, s3_env["AWS_ACCESS_KEY_ID"],
                           s3_env["AWS_SECRET_ACCESS_KEY"], root / "logs")
    ray_head = None
    ray_root = Path("/tmp") / f"ray-bench-{os.getpid()}"  # Ray's socket paths stay short
    try:
        dashboard, gcs = free_ports(2, avoid={port})
        env = dict(os.environ, **s3_env, RAY_AUTH_MODE="disabled",
                   RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2", **(extra_env or {}))
        ray_head = start_ray_head(ray_root, gcs, dashboard,
                                  num_cpus=num_cpus or os.cpu_count() or 2,
                                  log_dir=root / "logs", env=env)
        yield Stack(s3_env["AWS_ENDPOINT_URL"], bucket, f"http://127.0.0.1:{dashboard}",
                    f"127.0.0.1:{gcs}", s3_env, root)
    finally:
        if ray_head is not None:
            ray_head.stop()
            shutil.rmtree(ray_root, ignore_errors=True)
        weed.stop()


def s3_client(stack: Stack) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=stack.endpoint_url, region_name="us-east-1",
                        aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"])


def submit(client: Any, **job: Any) -> str:
    """A fresh head answers "No available agent to submit job" for its first seconds."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return str(client.submit_job(**job))
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def wait_for(client: Any, submission_id: str, timeout_s: float) -> str:
    """The run's final status; ``TIMEOUT`` (and the run stopped) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = str(client.get_job_status(submission_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(0.5)
    client.stop_job(submission_id)
    return "TIMEOUT"


def read_events(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every event line a run wrote under ``prefix``, in order."""
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    events = []
    for key in sorted(item["Key"] for item in listing.get("Contents", [])):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        events += [json.loads(line) for line in body.splitlines() if line.strip()]
    return events


def read_metrics(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """The ``data`` of the run's ``metrics`` events, by step."""
    return sorted((e["data"] for e in read_events(s3, bucket, prefix) if e["type"] == "metrics"),
                  key=lambda d: d["step"])
