"""The services outside the cluster, shared by the cluster tests: each module gets its own
(module scope), under the ``root`` folder the module defines. And ``make run``'s whole stack
on the tiny model, one for the modules that only use it (package scope)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from contract.base_models import BaseModelManifest
from contract.bucket import base_model_manifest_key
from devstack.databases import fresh_database
from devstack.processes import free_port, free_ports, start_seaweedfs
from devstack.stack import Stack, running_stack
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


@pytest.fixture(scope="package")
def tiny_stack_env(tiny_model_dir: Path) -> Callable[[], dict[str, str]]:
    """The settings of a ``make run`` stack serving the tiny model (a volume-path base); each
    call picks its own free ports, so two such stacks can run side by side."""
    ports = ("OPENFT_PORT", "OPENFT_S3_PORT", "OPENFT_RAY_GCS_PORT",
             "OPENFT_RAY_DASHBOARD_PORT", "OPENFT_SERVING_PORT")

    def env() -> dict[str, str]:
        return {**{name: str(port)
                   for name, port in zip(ports, free_ports(len(ports)), strict=True)},
                "OPENFT_DEFAULT_BASE_MODEL": "false",
                "OPENFT_BASE_MODELS": json.dumps({"tiny-llama": str(tiny_model_dir)})}

    return env


@pytest.fixture(scope="package")
def tiny_stack(tmp_path_factory: pytest.TempPathFactory,
               tiny_stack_env: Callable[[], dict[str, str]]) -> Iterator[Stack]:
    """``make run``'s launcher on the tiny model, started once for the tests that train and
    chat on it without stopping or restarting it (each its own job): a start is SeaweedFS, a
    Ray head, vLLM under Ray Serve and the API, a minute or more."""
    with running_stack(tmp_path_factory.mktemp("tiny-stack") / "data", tiny_stack_env()) as stack:
        yield stack
