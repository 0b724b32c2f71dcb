"""The Helm chart's wiring, not only its syntax: ``helm template`` renders the chart, and every
pod it defines runs here as processes with exactly the rendered command and environment, as
Kubernetes and KubeRay would start them (tests/support/kube.py), Services mapped to loopback
ports. Then a user completes a fine-tuning job and a chat through the official SDK, and
Prometheus' view (``/metrics`` on the API, Ray's metrics port on every node) shows it.

What the operator brings is made here: PostgreSQL and SeaweedFS as the "managed" database and
bucket, the Secrets the values file names, the base model registered in the bucket. What
KubeRay does is done by hand: ``ray start`` from each group's ``rayStartParams`` and limits,
the Ray auth token from ``authOptions`` injected into every Ray container. The serving token
is the chart's own Secret: the API, the deploy hook and the head's keeper read it, the Ray
containers never do, and serving refuses whoever lacks it. What Helm does:
the pre-install hook (migrations, twice at once: they take a lock), the post-install hook
(serving, submitted through the Jobs API from a pod that is no Ray node), ``helm test``.

A setting the chart forgets (a name, a port, a Secret key) fails here: nothing of this
test process's environment reaches the pods.
"""

from __future__ import annotations

import json
import os
import re
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

from contract.serving import SERVING_TOKEN_ENV, serving_token_digest
from devstack.processes import (
    HEAD_LISTENERS,
    NODE_LISTENERS,
    ManagedProcess,
    free_port,
    free_ports,
    http_ok,
    port_open,
    start,
    venv_bin,
    wait_until,
)
from tests.conftest import S3Server
from tests.e2e.pods import BASE_ID, answer, run_to_end, start_capitals_job
from tests.support import kube
from tests.support.dockerfile import image_env
from tests.support.helm import render
from tests.support.jobs import wait_for_terminal

REPO = Path(__file__).resolve().parents[2]
VALUES = Path(__file__).with_name("chart-wiring-values.yaml")
RELEASE = "wire"
KEY = "sk-chart-wiring"
ORG = "org-chart"
CONTAINER_PORTS = {"gcs": 6379, "dashboard": 8265, "serve": 8000, "metrics": 8080}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Short (Ray's Unix sockets live under each node's temp dir); logs kept by pytest."""
    path = Path("/tmp") / f"oft-chart-{os.getpid()}"
    kept = tmp_path_factory.mktemp("chart-logs")
    path.mkdir()
    (path / "logs").symlink_to(kept)
    try:
        yield path
    finally:
        for session in path.glob("*/session_latest"):
            shutil.copytree(session.resolve() / "logs", kept / f"ray-{session.parent.name}",
                            ignore_dangling_symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(path, ignore_errors=True)


# --- the chart, rendered as an operator would -------------------------------------------------


@pytest.fixture(scope="module")
def operator_secrets(bucket: S3Server, database_url: str) -> dict[str, dict[str, str]]:
    """The Secrets the values file names, created by the operator before ``helm install``."""
    return {
        "openft-database": {"database-url": database_url},
        "openft-s3": {"access-key-id": bucket.access_key,
                      "secret-access-key": bucket.secret_key},
        "openft-api-keys": {"api-keys": f"{KEY}={ORG}"},
    }


@pytest.fixture(scope="module")
def manifests(bucket: S3Server) -> list[kube.Manifest]:
    return render([VALUES], {"s3.endpointUrl": bucket.endpoint_url, "s3.bucket": bucket.bucket},
                  release=RELEASE)


@dataclass
class Pods:
    """Rendered pods started as processes: their env resolved from Secrets, every in-cluster
    ``service:port`` and every mount path mapped to what runs here."""

    root: Path
    manifests: list[kube.Manifest]
    secrets: dict[str, dict[str, str]]
    endpoints: dict[str, str] = field(default_factory=dict)
    started: list[ManagedProcess] = field(default_factory=list)
    serve_port: int = 0
    """Where the head's Serve proxy (container port 8000) listens here."""

    def serving_config(self, text: str) -> str:
        """serving.deploy's JSON config with the proxy's host and port mapped to loopback."""
        config = json.loads(text)
        assert (config["host"], config["port"]) == ("0.0.0.0", CONTAINER_PORTS["serve"])
        config.update(host="127.0.0.1", port=self.serve_port)
        return json.dumps(config)

    def env(self, pod: str, spec: kube.Manifest, container: kube.Manifest,
            dockerfile: str) -> dict[str, str]:
        """The image's ENV lines, then the container's env, with Services and mounts mapped."""
        host = {k: os.environ[k] for k in ("HOME", "LANG") if k in os.environ}
        # The image's PATH starts with its venv: here, ours.
        host["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        env = {**host, **image_env(REPO / "deploy" / dockerfile),
               **kube.container_env(container, self.secrets)}
        mounts = self.mounts(pod, spec, container)
        return {k: self.local(v, mounts) for k, v in env.items()}

    def mounts(self, pod: str, spec: kube.Manifest, container: kube.Manifest) -> dict[str, str]:
        """Each mount path -> a folder of this pod's own (emptyDir, PVC alike); a ConfigMap's
        keys become its files, as the kubelet writes them."""
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        out = {}
        for mount in container.get("volumeMounts") or []:
            local = self.root / pod / mount["mountPath"].strip("/").replace("/", "_")
            local.mkdir(parents=True, exist_ok=True)
            out[mount["mountPath"]] = str(local)
            config_map = volumes[mount["name"]].get("configMap")
            if config_map:
                data = kube.one(self.manifests, "ConfigMap", config_map["name"])["data"]
                for key, text in data.items():
                    (local / key).write_text(self.serving_config(text)
                                             if key == "serving.json" else text)
        return out

    def local(self, value: str, mounts: dict[str, str]) -> str:
        value = kube.remap(value, self.endpoints)
        for path, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if value == path or value.startswith(path.rstrip("/") + "/"):
                return local + value[len(path):]
        return value

    def argv(self, container: kube.Manifest, mounts: dict[str, str] | None = None) -> list[str]:
        argv = [self.local(a, mounts or {})
                for a in [*container.get("command", []), *container.get("args", [])]]
        assert argv, f"container {container['name']} relies on the image's CMD"
        argv[0] = sys.executable if argv[0] == "python" else venv_bin(argv[0])
        return argv

    def run(self, name: str, workload: kube.Manifest, timeout: float,
            edit=lambda argv: argv) -> None:
        """A Job's (or a test Pod's) single container, run to its end."""
        spec = kube.pod_spec(workload)
        [container] = spec["containers"]
        run_to_end(name, edit(self.argv(container)), self.root / "logs",
                   self.env(name, spec, container, dockerfile_of(container)), timeout)


def dockerfile_of(container: kube.Manifest) -> str:
    """Which of deploy/'s images the container runs (its ENV lines start its environment)."""
    repository = container["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return "ray.Dockerfile" if repository.endswith("-ray") else "api.Dockerfile"


@pytest.fixture(scope="module")
def pods(root: Path, manifests: list[kube.Manifest],
         operator_secrets: dict[str, dict[str, str]]) -> Iterator[Pods]:
    p = Pods(root, manifests, {**operator_secrets, **kube.rendered_secrets(manifests)})
    try:
        yield p
    finally:
        with ThreadPoolExecutor(max(1, len(p.started))) as pool:
            # Ray's nodes, as the chart starts them, drain for up to 30 s on SIGTERM (Ray 2.60:
            # Serve's actors on the head never go idle), which the kubelet would wait out; the
            # teardown is not under test, so 5 s, then SIGKILL (it took 22 s of every run).
            list(pool.map(lambda proc: proc.stop(timeout=5.0), reversed(p.started)))


# --- helm install: hooks, the Ray cluster, serving, the API -----------------------------------


@pytest.fixture(scope="module")
def migrated(pods: Pods) -> None:
    """The pre-install hook: run twice at once, as two overlapping upgrades would."""
    [job] = [m for m in kube.hooks(pods.manifests, "pre-install") if m["kind"] == "Job"]
    assert "pre-upgrade" in job["metadata"]["annotations"]["helm.sh/hook"]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: pods.run(f"migrate-{i}", job, 120), range(2)))


@dataclass
class RayCluster:
    name: str
    token: str
    gcs: str
    dashboard_url: str
    metrics_ports: dict[str, int]


@pytest.fixture(scope="module")
def ray_cluster(pods: Pods, migrated: None) -> RayCluster:
    """What KubeRay starts for the RayCluster: the head, then each worker group's replicas."""
    cluster = kube.one(pods.manifests, "RayCluster")
    name, spec = cluster["metadata"]["name"], cluster["spec"]
    auth = spec["authOptions"]
    assert auth["mode"] == "token"
    token = pods.secrets[auth["secretName"]]["auth_token"]
    kuberay_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}

    gcs, dashboard, serve, head_metrics = free_ports(4)
    pods.serve_port = serve
    svc = f"{name}-head-svc"
    pods.endpoints.update({f"{svc}:6379": f"127.0.0.1:{gcs}",
                           "127.0.0.1:8265": f"127.0.0.1:{dashboard}",  # inside the head pod
                           f"{svc}:8265": f"127.0.0.1:{dashboard}",
                           f"{svc}:8000": f"127.0.0.1:{serve}",
                           f"{svc}:8080": f"127.0.0.1:{head_metrics}"})
    head = spec["headGroupSpec"]
    params = kube.ray_start_params(head)
    assert params.pop("num-cpus") == "0", "the head must run no work"
    assert params.pop("num-gpus", "0") == "0"
    assert params.pop("metrics-export-port") == str(CONTAINER_PORTS["metrics"])
    params.pop("dashboard-host")  # 0.0.0.0 in a pod; loopback here
    assert not params, f"rayStartParams this test does not map yet: {params}"
    argv = ["--head", f"--port={gcs}", "--num-cpus=0", "--num-gpus=0",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}", f"--metrics-export-port={head_metrics}",
            *node_listeners(HEAD_LISTENERS, {gcs, dashboard, serve, head_metrics})]
    metrics = {"head": head_metrics}
    pods.started.append(start_node(pods, "ray-head", head, argv, kuberay_env))
    wait_until(lambda: http_ok(f"http://127.0.0.1:{dashboard}/api/version"), "Ray dashboard",
               pods.started[-1], 120)
    # The head pod's other container: the sidecar that deploys serving again when it is gone.
    [keeper] = [c for c in head["template"]["spec"]["containers"]
                if c["name"] == "serving-keeper"]
    head_spec = head["template"]["spec"]
    mounts = pods.mounts("ray-head", head_spec, keeper)
    pods.started.append(start("serving-keeper", pods.argv(keeper, mounts), pods.root / "logs",
                              pods.env("ray-head", head_spec, keeper, dockerfile_of(keeper))))

    def worker(group: kube.Manifest, i: int) -> ManagedProcess:
        params = kube.ray_start_params(group)
        port = free_port()
        metrics[f"{group['groupName']}-{i}"] = port
        argv = [f"--address=127.0.0.1:{gcs}", f"--num-cpus={params.pop('num-cpus')}",
                f"--num-gpus={params.pop('num-gpus', '0')}", f"--metrics-export-port={port}",
                *node_listeners(NODE_LISTENERS, {port})]
        params.pop("metrics-export-port", None)
        assert not params, f"rayStartParams this test does not map yet: {params}"
        return start_node(pods, f"ray-{group['groupName']}-{i}", group, argv, kuberay_env)

    groups = [(g, i) for g in spec["workerGroupSpecs"] for i in range(g["replicas"])]
    assert len(groups) >= 2, "the wiring values run two worker pods"
    with ThreadPoolExecutor(len(groups)) as pool:
        pods.started += list(pool.map(lambda gi: worker(*gi), groups))
    return RayCluster(name, token, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}",
                      metrics)


def node_listeners(flags: tuple[str, ...], avoid: set[int]) -> list[str]:
    """Ray's other listeners on free ports (pods each have their own network; we share one).
    The metrics port is the chart's, mapped by the caller."""
    flags = tuple(f for f in flags if f != "--metrics-export-port")
    return [f"{flag}={port}" for flag, port in zip(flags, free_ports(len(flags), avoid),
                                                    strict=True)]


def start_node(pods: Pods, name: str, group: kube.Manifest, argv: list[str],
               kuberay_env: dict[str, str]) -> ManagedProcess:
    spec = group["template"]["spec"]
    [container] = [c for c in spec["containers"] if c["name"].startswith("ray-")]
    env = {**pods.env(name, spec, container, "ray.Dockerfile"), **kuberay_env}
    temp = pods.root / name / "ray"
    full = [venv_bin("ray"), "start", "--block", "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp}", "--disable-usage-stats", *argv]
    proc = start(name, full, pods.root / "logs", env)
    if "--head" not in argv:
        node_manager = next(int(a.split("=")[1]) for a in argv
                            if a.startswith("--node-manager-port="))
        wait_until(lambda: port_open(node_manager), f"Ray node {name}", proc, 120)
    return proc


@pytest.fixture(scope="module")
def serving(pods: Pods, ray_cluster: RayCluster, registered: object) -> str:
    """The post-install hook: it submits serving's deploy through the Jobs API."""
    [job] = [m for m in kube.hooks(pods.manifests, "post-install") if m["kind"] == "Job"]

    def on_loopback(argv: list[str]) -> list[str]:
        i = argv.index("--config") + 1
        return [*argv[:i], pods.serving_config(argv[i]), *argv[i + 1:]]

    pods.run("serving-deploy", job, 600, edit=on_loopback)
    return f"http://127.0.0.1:{pods.serve_port}"


@pytest.fixture(scope="module")
def api(pods: Pods, ray_cluster: RayCluster, serving: str) -> Iterator[str]:
    """The API Deployment's pod, ready by its own readinessProbe; its Service mapped."""
    deployment = kube.one(pods.manifests, "Deployment", "-api")
    spec = kube.pod_spec(deployment)
    [container] = [c for c in spec["containers"] if c["name"] == "api"]
    port = free_port()
    argv = pods.argv(container)
    argv[argv.index("--host") + 1] = "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "8000"
    argv[argv.index("--port") + 1] = str(port)
    proc = start("api", argv, pods.root / "logs",
                 pods.env("api", spec, container, "api.Dockerfile"))
    pods.started.append(proc)
    probe = container["readinessProbe"]["httpGet"]["path"]
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}{probe}"), "API readiness", proc, 120)
    service = kube.one(pods.manifests, "Service", "-api")
    for p in service["spec"]["ports"]:
        pods.endpoints[f"{service['metadata']['name']}:{p['port']}"] = f"127.0.0.1:{port}"
    return f"http://127.0.0.1:{port}"


def serving_token(pods: Pods) -> str:
    """The serving token as the API pod gets it (from the Secret its env names)."""
    deployment = kube.one(pods.manifests, "Deployment", "-api")
    [container] = [c for c in kube.pod_spec(deployment)["containers"] if c["name"] == "api"]
    return kube.container_env(container, pods.secrets)[SERVING_TOKEN_ENV]


# --- the test --------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_rendered_chart_trains_serves_and_reports_metrics(
    pods: Pods, ray_cluster: RayCluster, serving: str, api: str, bucket: S3Server
):
    # Ray's control plane refuses a caller without the token (tenants never get it).
    assert httpx.get(f"{ray_cluster.dashboard_url}/api/jobs/").status_code in (401, 403)
    # Serving answers only the API: no token, or the Ray token, is refused.
    for headers in ({}, {"Authorization": f"Bearer {ray_cluster.token}"}):
        refused = httpx.get(f"{serving}/v1/models", headers=headers, timeout=30)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "invalid_serving_token"

    # `helm test`: the chart's own check of the release.
    for test_pod in kube.hooks(pods.manifests, "test"):
        pods.run(f"helm-test-{test_pod['metadata']['name']}", test_pod, 60)

    client = OpenAI(base_url=f"{api}/v1", api_key=KEY, max_retries=0)
    assert BASE_ID in [m.id for m in client.models.list()]
    job = start_capitals_job(client, repeats=1, n_epochs=3, suffix="chart")
    job = wait_for_terminal(client, job.id, timeout=600)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model and answer(client, job.fine_tuned_model)

    # No secret travelled in the training run's runtime_env (the Ray pods hold them).
    runs = httpx.get(f"{ray_cluster.dashboard_url}/api/jobs/",
                     headers={"Authorization": f"Bearer {ray_cluster.token}"}).json()
    shown = json.dumps([r for r in runs if job.id in (r.get("submission_id") or "")])
    assert job.id in shown
    token = serving_token(pods)
    for secret in (bucket.secret_key, ray_cluster.token, KEY, token):
        assert secret not in shown
    # Serving's deploy jobs (the hook's, the keeper's) carried the token's digest, not the token.
    every_job = json.dumps(runs)
    assert serving_token_digest(token) in every_job and token not in every_job

    # Prometheus' view of what just happened.
    scraped = httpx.get(f"{api}/metrics").text
    assert sample(scraped, "openft_http_requests_total",
                  route="/v1/chat/completions", status="200") >= 1
    assert sample(scraped, "openft_http_requests_total",
                  route="/v1/fine_tuning/jobs", method="POST") >= 1
    assert sample(scraped, "openft_jobs", status="succeeded") == 1
    assert sample(scraped, "openft_job_duration_seconds_count", status="succeeded") >= 1
    assert sample(scraped, "openft_scheduler_ticks_total") >= 1
    assert job.id not in scraped and ORG not in scraped
    # A replaced head starts an empty cluster: the head pod's sidecar deploys serving again.
    gone = httpx.delete(f"{ray_cluster.dashboard_url}/api/serve/applications/",
                        headers={"Authorization": f"Bearer {ray_cluster.token}"}, timeout=60)
    assert gone.status_code == 200, gone.text
    wait_until(lambda: answers(client, job.fine_tuned_model), "serving deployed again",
               None, 420)
    assert "deploying" in (pods.root / "logs" / "serving-keeper.log").read_text()

    nodes = wait_for_metrics(ray_cluster, "ray_openft_adapter_loads_total")
    assert all(nodes.values()), f"a node's metrics port did not answer: {nodes.keys()}"
    loads = sum(sample(t, "ray_openft_adapter_loads_total") for t in nodes.values())
    assert loads >= 1, {n: sorted({m.split("{")[0] for m in t.splitlines()
                                   if m.startswith("ray_openft") or m.startswith("ray_serve_")})
                        for n, t in nodes.items()}
    assert sum(sample(t, "ray_openft_adapter_load_seconds_count") for t in nodes.values()) >= 1
    assert any("vllm" in line and "token" in line for t in nodes.values()
               for line in t.splitlines() if not line.startswith("#")), \
        "vLLM's engine metrics are on"


def answers(client: OpenAI, model: str) -> bool:
    try:
        return bool(answer(client, model))
    except Exception:  # noqa: BLE001 - not served (yet): asked again
        return False


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (Prometheus text)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def wait_for_metrics(cluster: RayCluster, name: str, timeout: float = 90) -> dict[str, str]:
    """Every node's metrics page once some node shows ``name`` (Ray exports on an interval)."""
    deadline = time.monotonic() + timeout
    while True:
        pages = {node: fetch(f"http://127.0.0.1:{port}/metrics")
                 for node, port in cluster.metrics_ports.items()}
        if any(name in page for page in pages.values()) or time.monotonic() > deadline:
            return pages
        time.sleep(3)


def fetch(url: str) -> str:
    try:
        return httpx.get(url, timeout=10).text
    except httpx.HTTPError:
        return ""

