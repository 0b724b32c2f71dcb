"""What a KubeRay install runs, as processes on this machine, driven through the official SDK.

A Ray head that runs no work (``--num-cpus=0``) and worker nodes that join it with
``ray start --address``, each with its own temp dir and model cache, as pods would; PostgreSQL
and SeaweedFS as services outside the cluster; the tiny model registered in the bucket, so no
node and no API has it on disk; serving deployed onto the cluster from outside it
(``python -m serving.deploy``, as the chart's deploy step runs it); the API as its own process
(``uvicorn --factory``, as the image runs it) with nothing but a pod's environment. Then a
two-worker job trains with one Train worker on each node, each node fetches the base model
from the bucket, one node is lost mid-run and a fresh one takes its place (KubeRay recreating
the pod: new temp dir, empty cache), the job still succeeds and its model answers.

This is the shape the Helm chart wraps: if it works here, the chart's wiring is only names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from contract.base_models import MODEL_CACHE_ENV, BaseModelManifest
from devstack.processes import (
    ManagedProcess,
    free_port,
    free_ports,
    start_ray_head,
    start_ray_worker,
)
from tests.conftest import S3Server
from tests.e2e.pods import BASE_ID, answer, pod_env, run_to_end, start_capitals_job
from tests.support.api_process import KEY, api_process
from tests.support.jobs import wait_for_terminal
from tests.training.runs import of_type, read_events

NODE_CPUS = 2
"""Per worker node: one Train worker (1 CPU) plus, on one of them, the serving replica (0.5)."""

SERVING_TOKEN = f"serving-{os.getpid()}-topology"
"""The Secret the chart gives the API and serving's deploy step, and no Ray pod."""
# --- the services outside the cluster --------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every node's temp dir and cache, and the logs. Short on purpose: Ray puts Unix sockets
    under each node's temp dir (~100 bytes max). Removed afterwards; the logs, Ray's
    included, are kept among pytest's temp dirs for a post-mortem."""
    path = Path("/tmp") / f"oft-topo-{os.getpid()}"
    kept = tmp_path_factory.mktemp("topology-logs")
    (path / "logs").parent.mkdir()
    (path / "logs").symlink_to(kept)
    try:
        yield path
    finally:
        for session in path.glob("*/session_latest"):
            with contextlib.suppress(OSError):  # a log Ray still writes: the rest is kept
                shutil.copytree(session.resolve() / "logs", kept / f"ray-{session.parent.name}",
                                ignore_dangling_symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(path, ignore_errors=True)


# --- the Ray cluster -------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    process: ManagedProcess
    cache_dir: Path


@dataclass
class Cluster:
    """A head that runs no work and worker nodes that come and go, as KubeRay's pods do."""

    root: Path
    gcs_address: str
    dashboard_url: str
    node_env: dict[str, str]
    """What the chart's pod template gives every Ray container (the bucket's credentials)."""
    head: ManagedProcess
    nodes: dict[str, Node] = field(default_factory=dict)

    def add_nodes(self, *names: str) -> None:
        """Worker pods, started side by side: each with its own temp dir, an empty model
        cache and a resource naming it."""
        with ThreadPoolExecutor(len(names)) as pool:
            for node in pool.map(self._start_node, names):
                self.nodes[node.name] = node

    def _start_node(self, name: str) -> Node:
        cache = self.root / f"{name}-cache"
        env = pod_env(**self.node_env, **{MODEL_CACHE_ENV: str(cache)})
        proc = start_ray_worker(self.gcs_address, self.root / name, NODE_CPUS,
                                self.root / "logs", env, num_gpus=0,
                                resources={node_resource(name): 1}, name=f"ray-{name}")
        return Node(name, proc, cache)

    def node_names(self) -> dict[str, str]:
        """Ray node id -> our name for it (``head`` or the worker's), dead nodes included."""
        from ray.util.state import list_nodes

        names = {}
        for node in list_nodes(address=self.dashboard_url, detail=True, limit=1000):
            if node.is_head_node:
                names[node.node_id] = "head"
            for name in self.nodes:
                if node_resource(name) in (node.resources_total or {}):
                    names[node.node_id] = name
        return names

    def actors(self, prefix: str, *, alive: bool = False,
               placed: bool = False) -> list[str]:
        """The node name of each actor whose class name starts with ``prefix`` (only live
        ones, only those holding resources of a placement group), sorted."""
        from ray.util.state import list_actors

        names = self.node_names()
        return sorted(
            names.get(a.node_id or "", "?")
            for a in list_actors(address=self.dashboard_url, limit=10000, detail=True)
            if a.class_name.startswith(prefix) and (a.state == "ALIVE" or not alive)
            and (a.placement_group_id or not placed))

    def stop(self) -> None:
        """Worker nodes side by side (``ray start --block`` can take its whole SIGTERM grace
        to exit), then the head."""
        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            list(pool.map(lambda node: node.process.stop(), self.nodes.values()))
        self.head.stop()


def node_resource(name: str) -> str:
    return f"openft-test-node-{name}"


@pytest.fixture(scope="module")
def cluster(root: Path, bucket: S3Server) -> Iterator[Cluster]:
    gcs_port, dashboard_port = free_ports(2)
    node_env = {**bucket.env, "VLLM_CPU_KVCACHE_SPACE": "1"}
    # The head's pod gets the same template (its driver reads the bucket), and a cache of its
    # own that nothing should need: it runs no Train worker and no replica.
    head = start_ray_head(root / "head", gcs_port, dashboard_port, num_cpus=0,
                          log_dir=root / "logs", num_gpus=0,
                          env=pod_env(**node_env, **{MODEL_CACHE_ENV: str(root / "head-cache")}))
    c = Cluster(root, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", node_env,
                head)
    try:
        c.add_nodes("w1", "w2")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def serve_url(cluster: Cluster, registered: BaseModelManifest, root: Path,
              bucket: S3Server) -> str:
    """Serving deployed from outside the cluster: a process that is no Ray node, given only
    the head's address and a config with no path and no secret in it."""
    port = free_port()
    config = {"host": "127.0.0.1", "port": port, "s3_bucket": bucket.bucket,
              "base_models": [{"id": BASE_ID}], "ready_timeout_s": 420}
    url = f"http://127.0.0.1:{port}"
    run_to_end("serving-deploy", [sys.executable, "-m", "serving.deploy",
                                  "--address", cluster.gcs_address, "--serve-url", url,
                                  "--config", json.dumps(config)],
               root / "logs", pod_env(OPENFT_SERVING_TOKEN=SERVING_TOKEN), 480)
    return url


@pytest.fixture(scope="module")
def client(bucket: S3Server, cluster: Cluster, serve_url: str, database_url: str,
           root: Path) -> Iterator[OpenAI]:
    """The API pod: external PostgreSQL and S3, the head's dashboard, serving's URL, and a
    bucket model with no path (it reads only the tokenizer and config from the bucket)."""
    env = pod_env(
        OPENFT_PORT=str(free_port()),
        OPENFT_DATA_DIR=str(root / "api-data"),
        OPENFT_DATABASE_URL=database_url,
        OPENFT_S3_ENDPOINT_URL=bucket.endpoint_url,
        OPENFT_S3_BUCKET=bucket.bucket,
        OPENFT_S3_ACCESS_KEY=bucket.access_key,
        OPENFT_S3_SECRET_KEY=bucket.secret_key,
        OPENFT_RAY_ADDRESS=cluster.dashboard_url,
        OPENFT_SERVING_URL=serve_url,
        OPENFT_SERVING_TOKEN=SERVING_TOKEN,
        OPENFT_API_KEYS=f"{KEY}=org-topology",
        OPENFT_DEFAULT_BASE_MODEL="false",
        OPENFT_BASE_MODELS=json.dumps({BASE_ID: {}}),
    )
    with api_process(env, root / "logs") as sdk:
        yield sdk


# --- the test --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_spreads_over_two_nodes_survives_losing_one_and_its_model_answers(
    client: OpenAI, cluster: Cluster, bucket: S3Server, registered: BaseModelManifest,
    serve_url: str,
):
    began = time.monotonic()
    assert BASE_ID in [m.id for m in client.models.list()]
    assert answer(client, BASE_ID)  # served from the bucket model, through the API
    # Serving answers only the API; what the cluster shows of serving holds no token.
    refused = httpx.get(f"{serve_url}/v1/models", timeout=30)
    assert refused.status_code == 401, refused.text
    apps = httpx.get(f"{cluster.dashboard_url}/api/serve/applications/", timeout=30).text
    assert SERVING_TOKEN not in apps

    # 24 examples, 4 per step: 6 steps an epoch, a checkpoint at the end of each of 6.
    job = start_capitals_job(client, repeats=2, n_epochs=6, suffix="topo")

    # One Train worker on each worker node, none on the head.
    placed = wait_for(lambda: cluster.actors("RayTrainWorker", alive=True), 2,
                      "two Train workers")
    assert placed == ["w1", "w2"], placed
    # The engine replica (the one holding CPUs; Serve's ingress holds none) stays up.
    [engine_node] = cluster.actors("ServeReplica", alive=True, placed=True)
    [victim] = [n for n in placed if n != engine_node]

    # Lost after the first checkpoint (the end of epoch 1), as a pod whose machine died.
    first = wait_for_checkpoint(bucket, job.id)
    killed_at = time.monotonic()
    cluster.nodes[victim].process.kill()
    cluster.add_nodes("w3")  # KubeRay recreates the pod: new temp dir, empty cache

    job = wait_for_terminal(client, job.id, timeout=600)
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200)]
    assert job.status == "succeeded", (job.error, messages[:20], ray_job_logs(cluster, job.id))
    # Ray Train's recovery, as the user sees it: from a checkpoint taken before the loss.
    restarts = [m for m in messages if m.startswith("Training restarted")]
    assert len(restarts) == 1, (first, messages)
    restart = restarts[0]
    assert int(restart.rsplit(" ", 1)[-1]) >= first, restart
    assert job.fine_tuned_model and job.fine_tuned_model.startswith(f"ft:{BASE_ID}:")

    # The restarted worker group spread over the survivor and the new node.
    ran_on = set(cluster.actors("RayTrainWorker"))
    assert ran_on == {"w1", "w2", "w3"}, ran_on
    for name in ("w1", "w2", "w3"):  # each fetched the base model itself, and verified it
        assert holds_model(cluster.nodes[name].cache_dir, registered), name
    assert not holds_model(cluster.root / "head-cache", registered)  # the head ran no work

    assert answer(client, job.fine_tuned_model)
    print(f"killed {victim} after the checkpoint of step {first}, "
          f"{killed_at - began:.0f}s in; {restart!r}; done in {time.monotonic() - began:.0f}s")



# --- helpers ---------------------------------------------------------------------------------


def wait_for(get, count: int, what: str, timeout: float = 300) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(found := get()) >= count:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {what} after {timeout:.0f}s")


def wait_for_checkpoint(bucket: S3Server, job_id: str, timeout: float = 300) -> int:
    """The step of the run's first ``checkpoint`` event, read from the bucket at once (the
    API would show it a scheduler tick later)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if checkpoints := of_type(read_events(bucket, job_id)[1], "checkpoint"):
            return int(checkpoints[0]["step"])
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of {job_id} after {timeout:.0f}s")



def holds_model(cache_dir: Path, manifest: BaseModelManifest) -> bool:
    """Whether some folder under ``cache_dir`` holds every file of the manifest, byte for
    byte (sizes and SHA-256 as registered)."""
    for folder in {p.parent for p in cache_dir.rglob("config.json")}:
        if all(_same(folder / f.name, f.size, f.sha256) for f in manifest.files):
            return True
    return False


def _same(path: Path, size: int, sha256: str) -> bool:
    if not path.is_file() or path.stat().st_size != size:
        return False
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == sha256


def ray_job_logs(cluster: Cluster, job_id: str) -> str:
    """The tail of the job's Ray driver logs, for a failure message."""
    from ray.job_submission import JobSubmissionClient

    ray_jobs = JobSubmissionClient(cluster.dashboard_url)
    logs = [ray_jobs.get_job_logs(j.submission_id) for j in ray_jobs.list_jobs()
            if j.submission_id and job_id in j.submission_id]
    return "\n".join(logs)[-5000:]
