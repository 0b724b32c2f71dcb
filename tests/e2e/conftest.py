"""The services outside the cluster, shared by the cluster tests: each module gets its own
(module scope), under the ``root`` folder the module defines. And ``make run``'s whole stack
on the tiny model, one for the package (started once, restarted by test_flow)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from contract.base_models import BaseModelManifest
from contract.bucket import base_model_manifest_key
from devstack.databases import fresh_database
from devstack.processes import free_port, start_seaweedfs
from devstack.stack import Stack, free_user_ports, running_stack
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
def tiny_stack_env(tiny_model_dir: Path) -> dict[str, str]:
    """The settings of a ``make run`` stack serving the tiny model (a volume-path base)."""
    return {**free_user_ports(),
            "OPENFT_DEFAULT_BASE_MODEL": "false",
            "OPENFT_BASE_MODELS": json.dumps({"tiny-llama": str(tiny_model_dir)})}


class StackRunner:
    """``make run``'s launcher on one data dir, started when first asked for and able to stop
    and start again there: the modules that only use the stack share one start, and
    test_flow's restart is a stop and a start of that same stack (a start is SeaweedFS, a
    Ray head, vLLM under Ray Serve and the API, a minute or more)."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir, self.env = data_dir, env
        self._running: ExitStack | None = None
        self._stack: Stack | None = None

    def start(self) -> Stack:
        """The running stack; started here when it is not."""
        if self._stack is None:
            self._running = ExitStack()
            self._stack = self._running.enter_context(running_stack(self.data_dir, self.env))
        return self._stack

    def stop(self) -> Stack | None:
        """SIGTERM to the launcher, as Ctrl-C; the stack stopped, with what it left running
        in ``leftovers`` (None when none was running)."""
        stack, running = self._stack, self._running
        self._stack = self._running = None
        if running is not None:
            running.close()
        return stack


@pytest.fixture(scope="package")
def tiny_stacks(tmp_path_factory: pytest.TempPathFactory,
                tiny_stack_env: dict[str, str]) -> Iterator[StackRunner]:
    runner = StackRunner(tmp_path_factory.mktemp("tiny-stack") / "data", tiny_stack_env)
    try:
        yield runner
    finally:
        runner.stop()


@pytest.fixture(scope="module")
def tiny_stack(tiny_stacks: StackRunner) -> Stack:
    """The shared tiny-model stack, running (each test trains its own job on it). The data dir,
    ports and API key stay the same across a restart."""
    return tiny_stacks.start()
