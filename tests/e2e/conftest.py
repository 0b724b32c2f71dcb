"""The services outside the cluster, shared by the cluster tests: each module gets its own
(module scope), under the ``root`` folder the module defines."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.base_models import BaseModelManifest
from contract.bucket import base_model_manifest_key
from devstack.databases import fresh_database
from devstack.processes import free_port, start_seaweedfs
from tests.conftest import S3Server
from tests.e2e.pods import BASE_ID, pod_env, run_to_end


@pytest.fixture(scope="module")
def bucket(root: Path) -> Iterator[S3Server]:
    port = free_port()
    proc = start_seaweedfs(root / "s3", port, "openft-e2e", "e2e-access", "e2e-secret",
                           root / "logs")
    try:
        yield S3Server(f"http://127.0.0.1:{port}", "openft-e2e", "e2e-access", "e2e-secret",
                       proc)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with fresh_database("openft_e2e") as url:
        yield url


@pytest.fixture(scope="module")
def registered(bucket: S3Server, tiny_model_dir: Path, root: Path) -> BaseModelManifest:
    """The tiny model uploaded once with the registration command an operator runs."""
    env = pod_env(OPENFT_S3_ENDPOINT_URL=bucket.endpoint_url, OPENFT_S3_BUCKET=bucket.bucket,
                  OPENFT_S3_ACCESS_KEY=bucket.access_key, OPENFT_S3_SECRET_KEY=bucket.secret_key)
    run_to_end("register", [sys.executable, "-m", "service.base_models", "register",
                            "--id", BASE_ID, str(tiny_model_dir)], root / "logs", env, 120)
    body = bucket.client().get_object(Bucket=bucket.bucket, Key=base_model_manifest_key(BASE_ID))
    return BaseModelManifest.model_validate_json(body["Body"].read())
