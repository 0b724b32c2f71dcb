"""Serving test support: a LoRA adapter for the tiny model whose weights visibly change its
output (``devstack.adapters``) put in S3, and a serving app deployed with the real CLI into
the test Ray head."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from openai import OpenAI

from devstack.adapters import build_lora_adapter, upload_adapter
from devstack.processes import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]

SERVING_TOKEN = f"serving-token-{uuid.uuid4().hex}"
"""The token every serving app of these tests is deployed for (as the API would hold it)."""

AS_THE_API = {"Authorization": f"Bearer {SERVING_TOKEN}"}
"""Headers of a raw HTTP call to serving made as the API makes it."""


def serving_client(serving_url: str, timeout: float = 180) -> OpenAI:
    """The official SDK on the serving app's ``/v1`` as the API calls it (its bearer token is
    the serving token), without the SDK's own retries."""
    return OpenAI(base_url=serving_url, api_key=SERVING_TOKEN, max_retries=0, timeout=timeout)


def answer(client: OpenAI, model: str, max_tokens: int = 12) -> tuple[str, str]:
    """The greedy answer to ``MESSAGES`` and the ``system_fingerprint`` naming the replica
    that gave it."""
    response = client.chat.completions.create(model=model, messages=MESSAGES,
                                              max_tokens=max_tokens, temperature=0)
    return response.choices[0].message.content or "", response.system_fingerprint


def replica_id(fingerprint: str) -> str:
    """The Serve replica id that ``serving.server`` appends to vLLM's ``system_fingerprint``
    (``<vllm fingerprint>-<replica id>``), as the replicas' log lines name it."""
    return fingerprint.rsplit("-", 1)[-1]


def new_adapter(s3_server, base_dir: Path, out_dir: Path, seed: int = 1) -> str:
    """Build an adapter with ``seed`` and put it in S3 under a fresh key; return the key."""
    key = f"ftkey-{uuid.uuid4().hex[:8]}"
    adapter_dir = build_lora_adapter(base_dir, out_dir, seed=seed)
    upload_adapter(s3_server.client(), s3_server.bucket, adapter_dir, key)
    return key


def ray_env(s3_server) -> dict[str, str]:
    return dict(os.environ, **s3_server.env, RAY_AUTH_MODE="disabled")


@contextmanager
def deployed(config: dict, ray_head, s3_server) -> Iterator[str]:
    """Deploy ``config`` (on a free port) through ``python -m serving.deploy``; yield the
    ``/v1`` URL; shut Serve down afterwards, even when the test failed."""
    port = free_port()
    env = ray_env(s3_server)
    # The token as the Helm chart's deploy step holds it; only its digest reaches Ray.
    deploy_env = dict(env, OPENFT_SERVING_TOKEN=SERVING_TOKEN)
    folders_before = replica_adapter_folders()
    try:
        deploy = subprocess.run(
            [sys.executable, "-m", "serving.deploy", "--config",
             json.dumps({**config, "port": port}), "--address", ray_head.gcs_address],
            cwd=REPO_ROOT, env=deploy_env, capture_output=True, text=True, timeout=480,
        )
        assert deploy.returncode == 0, f"deploy failed:\n{deploy.stdout}\n{deploy.stderr[-4000:]}"
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        # Serve's controller is detached: stop it (and its replicas and proxy) from a
        # short-lived driver so later tests on this Ray head start clean.
        shutdown = (
            "import ray; from ray import serve; "
            f"ray.init(address={ray_head.gcs_address!r}, logging_level='ERROR'); serve.shutdown()"
        )
        subprocess.run([sys.executable, "-c", shutdown], env=env, timeout=120, check=False)
    # Reached only when the test passed: stopped replicas leave no adapter copies behind.
    left = replica_adapter_folders() - folders_before
    assert not left, f"stopped replicas left adapter folders: {sorted(left)}"


def adapter_events(ray_head, app_name: str) -> list[tuple[str, str, str]]:
    """What the replicas of ``app_name`` logged about their adapters (``serving.adapters``),
    in order, as ``(replica id, model, event)``; ``event`` is ``loaded from S3`` or
    ``unloaded: <why>``.

    Read where an operator finds them: Serve's line format (``<app>_<deployment> <replica>
    <request> -- <message>``) in the Ray session's logs. Once vLLM has set up its logging in a
    replica, those lines reach the worker's stderr file (``logs/worker-*.err``), no longer
    ``logs/serve/replica_*.log``; both are read, each line once.
    """
    line_re = re.compile(rf"^\S+ (\S+ \S+) {re.escape(app_name)}_\S+ (\S+) .*-- adapter (\S+) "
                         r"(loaded from S3|unloaded: .+?)\s*$")
    logs = Path(ray_head.temp_dir) / "session_latest" / "logs"
    seen: dict[str, tuple[str, str, str, str]] = {}
    for path in [*logs.glob("worker-*.err"), *(logs / "serve").glob(f"replica_{app_name}_*.log")]:
        for line in path.read_text(errors="replace").splitlines():
            if match := line_re.search(line):
                stamp, replica, model, event = match.groups()
                seen.setdefault(line, (stamp, replica, model, event))
    return [(replica, model, event) for _, replica, model, event in sorted(seen.values())]


def replica_adapter_folders() -> set[Path]:
    """Adapter folders of serving replicas on this machine (``serving.server``)."""
    from serving.server import LORA_DIR_PREFIX

    return set(Path(tempfile.gettempdir()).glob(f"{LORA_DIR_PREFIX}*"))
