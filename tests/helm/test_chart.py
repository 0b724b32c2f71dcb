"""The Helm chart (helm/openft) as an operator meets it: it lints, every rendered object is valid
Kubernetes (KubeRay's against KubeRay's own CRDs), bad values are refused, and the rendered
pods are wired and locked down as the issue asks. No cluster: `helm template` renders offline.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helm.conftest import VALUES_FILES, Manifests, values_files
from tests.support.helm import CHART, ROOT, helm_binary, render, render_error, render_text

CRD_DIR = ROOT / "deploy" / "kuberay-crds"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
MIN_KUBERNETES = "1.27.0"
"""Chart.yaml's kubeVersion floor: the manifests must be valid there and on the newest."""
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor"}
"""CRDs kubernetes-validate does not know and the repo does not carry; checked by field."""
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|KEY|DATABASE_URL", re.IGNORECASE)
NON_SECRET_NAMES = {"OPENFT_MAX_ADAPTERS_PER_REPLICA"}
FILES = list(VALUES_FILES)


# --- walking the rendered objects -------------------------------------------------------------


def of_kind(manifests: Manifests, kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: Manifests, kind: str, name: str) -> dict[str, Any]:
    [found] = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    return found


def pod_templates(manifests: Manifests) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template {metadata, spec}) of every pod the release can start."""
    for m in manifests:
        where = f"{m['kind']}/{m['metadata']['name']}"
        if m["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield where, m["spec"]["template"]
        elif m["kind"] == "Pod":
            yield where, {"metadata": m["metadata"], "spec": m["spec"]}
        elif m["kind"] == "RayCluster":
            yield f"{where}/head", m["spec"]["headGroupSpec"]["template"]
            for group in m["spec"]["workerGroupSpecs"]:
                yield f"{where}/{group['groupName']}", group["template"]


def containers(manifests: Manifests) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, template in pod_templates(manifests):
        for c in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            yield f"{where}/{c['name']}", c


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def container_named(manifests: Manifests, name: str) -> dict[str, Any]:
    [found] = [c for _, c in containers(manifests) if c["name"] == name]
    return found


def hook_of(manifest: dict[str, Any]) -> set[str]:
    return set(manifest["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(","))


def ray_cluster(manifests: Manifests) -> dict[str, Any]:
    [cluster] = of_kind(manifests, "RayCluster")
    return cluster


def write_values(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values-under-test.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector's verdict on a pod's labels (matchLabels and In expressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


# --- lint and schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_helm_lint_strict(name: str) -> None:
    argv = [str(helm_binary()), "lint", "--strict", str(CHART)]
    for path in values_files(name):
        argv += ["--values", str(path)]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", FILES)
def test_every_manifest_is_valid_kubernetes(rendered: dict[str, Manifests], name: str) -> None:
    unknown = set()
    for manifest in rendered[name]:
        if manifest["kind"] == "RayCluster" or manifest["kind"] in PROMETHEUS_OPERATOR_KINDS:
            unknown.add(manifest["kind"])
            continue
        for version in (MIN_KUBERNETES, kubernetes_validate.latest_version()):
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{manifest['kind']}/{manifest['metadata']['name']} on "
                                     f"{version}: {e.message} at {list(e.path)}") from None
    assert "RayCluster" in unknown


@cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    """KubeRay's openAPIV3Schema for ``kind``, made strict the way the API server is: a field
    the schema does not list is an error (unless it preserves unknown fields)."""
    for path in CRD_DIR.glob("ray.io_*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            return jsonschema.Draft7Validator(strict_schema(version["schema"]["openAPIV3Schema"]))
    raise LookupError(kind)


def strict_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_errors(manifest: dict[str, Any]) -> list[str]:
    validator = crd_validator(manifest["kind"])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(manifest)]


@pytest.mark.parametrize("name", FILES)
def test_ray_objects_match_kuberays_crds(rendered: dict[str, Manifests], name: str) -> None:
    ray_objects = [m for m in rendered[name] if m["apiVersion"].startswith("ray.io/")]
    assert ray_objects
    for manifest in ray_objects:
        assert not crd_errors(manifest), crd_errors(manifest)


def test_the_crd_check_catches_a_made_up_field(default: Manifests) -> None:
    cluster = copy.deepcopy(ray_cluster(default))
    cluster["spec"]["workerGroupSpecs"][0]["gpuCount"] = 8
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["shmSize"] = "1Gi"
    errors = "\n".join(crd_errors(cluster))
    assert "gpuCount" in errors and "shmSize" in errors, errors


def test_a_wrong_type_is_refused_by_the_schema(tmp_path: Path) -> None:
    error = render_error([write_values(tmp_path, {"api": {"replicas": "two"}})])
    assert "replicas" in error and "integer" in error, error


@pytest.mark.parametrize("values, key", [
    ({"api": {"replica": 2}}, "replica"),
    ({"ray": {"workerGroups": [{"name": "g", "replicas": 1, "minReplicas": 0, "maxReplicas": 1,
                                "gpu": 8}]}}, "gpu"),
    ({"serving": {"config": {"max_model_length": 4096}}}, "max_model_length"),
    ({"models": {"base": [{"id": "m", "tensor_parallel": 2}]}}, "tensor_parallel"),
    ({"serving": {"token": {"secretName": "mine"}}}, "secretName"),
])
def test_an_unknown_key_is_refused_by_the_schema(tmp_path: Path, values: dict[str, Any],
                                                 key: str) -> None:
    error = render_error([write_values(tmp_path, values)])
    assert key in error and "additional properties" in error.lower(), error


@pytest.mark.parametrize("set_values, words", [
    ({"api.settings.OPENFT_WEBHOOK_SECRET": "whsec_x"}, "OPENFT_WEBHOOK_SECRET"),
    ({"api.settings.OPENFT_DATABASE_URL": "sqlite:///x.db"}, "OPENFT_DATABASE_URL"),
    ({"api.settings.OPENFT_SERVING_TOKEN": "plain"}, "OPENFT_SERVING_TOKEN"),
    ({"image.api.tag": "latest"}, "tag"),
    ({"s3.credentials": "keys"}, "credentials"),
])
def test_the_schema_refuses_secrets_in_settings_and_floating_tags(set_values: dict[str, Any],
                                                                  words: str) -> None:
    assert words in render_error([], set_values)


# --- the API ----------------------------------------------------------------------------


def test_the_api_has_startup_liveness_and_readiness_probes(default: Manifests) -> None:
    api = container_named(default, "api")
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {p["name"]: p["containerPort"] for p in api["ports"]} == {"http": 8000}
    assert api["command"] == ["uvicorn", "--factory", "service.main:create_app",
                              "--host", "0.0.0.0", "--port", "8000"]


def test_the_api_environment_is_what_its_settings_read(default: Manifests,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    env = env_of(container_named(default, "api"))
    refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env.items() if "valueFrom" in e}
    assert refs == {
        "OPENFT_DATABASE_URL": {"name": "openft-database", "key": "database-url"},
        "OPENFT_API_KEYS": {"name": "rel-openft-api-keys", "key": "api-keys"},
        "OPENFT_S3_ACCESS_KEY": {"name": "openft-s3", "key": "access-key-id"},
        "OPENFT_S3_SECRET_KEY": {"name": "openft-s3", "key": "secret-access-key"},
        "OPENFT_RAY_AUTH_TOKEN": {"name": "rel-openft-ray-auth", "key": "auth_token"},
        "OPENFT_SERVING_TOKEN": {"name": "rel-openft-serving-token", "key": "serving-token"},
    }
    for name, entry in env.items():
        monkeypatch.setenv(name, entry.get("value", f"from-secret-{name}"))
    settings = Settings()
    assert settings.serving_headers() == \
        {"Authorization": "Bearer from-secret-OPENFT_SERVING_TOKEN"}
    assert settings.ray_address == "http://rel-openft-ray-head-svc:8265"
    assert settings.serving_url == "http://rel-openft-ray-head-svc:8000"
    assert list(settings.base_model_configs()) == ["SmolLM2-135M-Instruct"]
    assert settings.serving.max_model_len == 1024
    assert env["OPENFT_MIGRATE_ON_START"]["value"] == "false"
    assert env["OPENFT_TRAINING_S3_CREDENTIALS"]["value"] == "node"


def test_ambient_s3_credentials_put_no_keys_in_any_pod(production: Manifests) -> None:
    for where, c in containers(production):
        names = set(env_of(c))
        assert not names & {"OPENFT_S3_ACCESS_KEY", "OPENFT_S3_SECRET_KEY", "AWS_ACCESS_KEY_ID",
                            "AWS_SECRET_ACCESS_KEY"}, where
    [account] = of_kind(production, "ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]


def test_production_api_has_replicas_a_pdb_and_an_ingress_on_v1_and_ui_only(
        production: Manifests, default: Manifests) -> None:
    [deployment] = of_kind(production, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    [pdb] = of_kind(production, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert not of_kind(default, "PodDisruptionBudget")  # one replica: a PDB would block drains
    assert not of_kind(default, "Ingress")
    [ingress] = of_kind(production, "Ingress")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/v1", "Prefix"), ("/ui", "Prefix")]
    assert {p["backend"]["service"]["name"] for p in paths} == {"rel-openft-api"}


def test_the_web_page_can_be_left_off_the_ingress() -> None:
    manifests = render([CHART / "values-production-gpu.yaml"],
                       {"api.ingress.webPage": False})
    [ingress] = of_kind(manifests, "Ingress")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert [p["path"] for p in paths] == ["/v1"]


@pytest.mark.parametrize("service_type", ["ClusterIP", "NodePort", "LoadBalancer"])
def test_the_service_type_comes_from_values(service_type: str) -> None:
    manifests = render([], {"api.service.type": service_type})
    assert named(manifests, "Service", "rel-openft-api")["spec"]["type"] == service_type


# --- secrets ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_secrets_live_only_in_secrets(rendered: dict[str, Manifests], name: str) -> None:
    manifests = rendered[name]
    for where, c in containers(manifests):
        for env in c.get("env", []):
            assert set(env) <= {"name", "value", "valueFrom"}, (where, env)
            if "valueFrom" in env:
                assert set(env["valueFrom"]) == {"secretKeyRef"}, (where, env)
            elif SECRET_NAME.search(env["name"]) and env["name"] not in NON_SECRET_NAMES:
                raise AssertionError(f"{where}: {env['name']} is a plain value")
        assert "envFrom" not in c, where  # every variable named, none by the Secret's keys
    for config_map in of_kind(manifests, "ConfigMap"):
        for key in config_map.get("data", {}):
            assert not SECRET_NAME.search(key), (config_map["metadata"]["name"], key)
    # The values the chart generated (passwords, keys, the Ray token) appear nowhere else.
    secret_values = [base64.b64decode(v).decode() for s in of_kind(manifests, "Secret")
                     for v in s.get("data", {}).values()]
    elsewhere = yaml.safe_dump_all([m for m in manifests if m["kind"] != "Secret"])
    for value in secret_values:
        for token in re.findall(r"[A-Za-z0-9]{20,}", value):  # the random parts
            assert token not in elsewhere


def test_no_secret_travels_in_a_ray_job_runtime_env(default: Manifests) -> None:
    """Ray pods hold the bucket's credentials themselves; the API says so to the launcher."""
    api = env_of(container_named(default, "api"))
    assert api["OPENFT_TRAINING_S3_CREDENTIALS"]["value"] == "node"
    for name in ("ray-head", "ray-worker"):
        env = env_of(container_named(default, name))
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "openft-s3"
        assert env["OPENFT_MODEL_CACHE_DIR"]["value"] == "/var/cache/openft/models"


SERVING_TOKEN_HOLDERS = {"api", "serving-deploy", "serving-keeper"}
"""The containers that hold the serving token: the API sends it, the deploy steps submit its
digest. Serving itself (the Ray pods) checks the digest and never holds the token."""


def serving_token_refs(manifests: Manifests) -> dict[str, dict[str, Any]]:
    """Container name -> the secretKeyRef its OPENFT_SERVING_TOKEN comes from."""
    from contract.serving import SERVING_TOKEN_ENV

    return {c["name"]: env_of(c)[SERVING_TOKEN_ENV]["valueFrom"]["secretKeyRef"]
            for _, c in containers(manifests) if SERVING_TOKEN_ENV in env_of(c)}


def test_the_chart_makes_the_serving_token_when_none_is_given(default: Manifests) -> None:
    ref = {"name": "rel-openft-serving-token", "key": "serving-token"}
    assert serving_token_refs(default) == dict.fromkeys(SERVING_TOKEN_HOLDERS, ref)
    secret = named(default, "Secret", "rel-openft-serving-token")
    assert len(base64.b64decode(secret["data"]["serving-token"])) >= 32
    # Kept across upgrades as the chart's other generated Secrets are: the live one is read.
    template = (CHART / "templates" / "secrets.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in template
    assert "index $live.data .Values.serving.token.key" in template


def test_an_operators_serving_token_secret_replaces_the_generated_one() -> None:
    manifests = render([], {"serving.token.existingSecret": "my-serving-token",
                            "serving.token.key": "token"})
    ref = {"name": "my-serving-token", "key": "token"}
    assert serving_token_refs(manifests) == dict.fromkeys(SERVING_TOKEN_HOLDERS, ref)
    assert "rel-openft-serving-token" not in [s["metadata"]["name"]
                                              for s in of_kind(manifests, "Secret")]


@pytest.mark.parametrize("name", FILES)
def test_no_ray_container_and_no_config_map_holds_the_serving_token(
        rendered: dict[str, Manifests], name: str) -> None:
    manifests = rendered[name]
    assert set(serving_token_refs(manifests)) == SERVING_TOKEN_HOLDERS
    [secret] = [s for s in of_kind(manifests, "Secret")
                if s["metadata"]["name"].endswith("-serving-token")]
    token = base64.b64decode(secret["data"]["serving-token"]).decode()
    # The Ray containers, head and workers: nothing of the token's Secret, under any name.
    cluster = copy.deepcopy(ray_cluster(manifests))
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    head["containers"] = [c for c in head["containers"] if c["name"] != "serving-keeper"]
    ray_pods = yaml.safe_dump(cluster)
    assert secret["metadata"]["name"] not in ray_pods and "SERVING_TOKEN" not in ray_pods
    for config_map in of_kind(manifests, "ConfigMap"):
        text = yaml.safe_dump(config_map)
        assert token not in text and secret["metadata"]["name"] not in text
    # The configs the deploy steps submit carry no token nor digest of their own: each step
    # puts in the digest of the token it holds, so a changed Secret cannot disagree with them.
    deploy = container_named(manifests, "serving-deploy")["command"]
    configs = [json.loads(deploy[deploy.index("--config") + 1])]
    configs += [json.loads(c["data"]["serving.json"]) for c in of_kind(manifests, "ConfigMap")
                if "serving.json" in c.get("data", {})]
    assert configs and all("api_token_sha256" not in c for c in configs)


# --- security -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_every_pod_runs_non_root_under_pod_security_restricted(rendered: dict[str, Manifests],
                                                               name: str) -> None:
    for where, template in pod_templates(rendered[name]):
        spec = template["spec"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        assert all("hostPath" not in v for v in spec.get("volumes", [])), where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["runAsNonRoot"] is True, (where, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            assert not sc.get("privileged"), (where, c["name"])
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", (where, c["name"])
    autoscaler = ray_cluster(rendered[name])["spec"].get("autoscalerOptions")
    if autoscaler:
        assert autoscaler["securityContext"]["allowPrivilegeEscalation"] is False
        assert autoscaler["securityContext"]["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("name", FILES)
def test_no_pod_gets_a_kubernetes_token_it_does_not_need(rendered: dict[str, Manifests],
                                                         name: str) -> None:
    autoscaling = ray_cluster(rendered[name])["spec"]["enableInTreeAutoscaling"]
    for where, template in pod_templates(rendered[name]):
        wanted = autoscaling and where.endswith("/head")  # the autoscaler sidecar's
        assert template["spec"]["automountServiceAccountToken"] is wanted, where


def test_api_and_hooks_have_a_read_only_root_filesystem(default: Manifests) -> None:
    for where, c in containers(default):
        if not c["name"].startswith("ray-"):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert "/tmp" in [m["mountPath"] for m in c["volumeMounts"]], where


@pytest.mark.parametrize("name", FILES)
def test_ray_pods_accept_only_openft_pods_on_dashboard_gcs_and_serve(
        rendered: dict[str, Manifests], name: str) -> None:
    manifests = rendered[name]
    cluster = ray_cluster(manifests)
    pods = [cluster["spec"]["headGroupSpec"]["template"]] + \
        [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    policies = [p for p in of_kind(manifests, "NetworkPolicy")
                if all(selects(p["spec"]["podSelector"], t["metadata"]["labels"]) for t in pods)]
    assert len(policies) == 1, "no NetworkPolicy selects every Ray pod"
    [policy] = policies
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    api_labels = next(t for w, t in pod_templates(manifests)
                      if w.startswith("Deployment/"))["metadata"]["labels"]
    hook_labels = [t["metadata"]["labels"] for w, t in pod_templates(manifests)
                   if w.startswith(("Job/", "Pod/"))]
    outsider = {"app.kubernetes.io/name": "something-else", "app.kubernetes.io/instance": "rel"}
    open_ports: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), f"a rule without 'from' admits everyone: {rule}"
        ports = [p["port"] for p in rule.get("ports", [])] or ["any"]
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            for port in ports:
                open_ports.setdefault(port, []).append(peer)
    for port in (6379, 8265, 8000):
        peers = open_ports[port] + open_ports.get("any", [])
        for peer in peers:
            assert set(peer) == {"podSelector"}, (port, peer)  # this namespace only
            assert not selects(peer["podSelector"], outsider), (port, peer)
        for labels in [api_labels, *hook_labels]:
            assert any(selects(p["podSelector"], labels) for p in peers), (port, labels)
    if name == "production-gpu":
        assert open_ports[8080] and all("namespaceSelector" in p for p in open_ports[8080])


def test_ray_token_auth_is_on(default: Manifests) -> None:
    spec = ray_cluster(default)["spec"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "rel-openft-ray-auth"}
    secret = named(default, "Secret", "rel-openft-ray-auth")
    assert len(base64.b64decode(secret["data"]["auth_token"])) >= 32
    external = render([], {"ray.auth.existingSecret": "my-ray-token"})
    assert ray_cluster(external)["spec"]["authOptions"]["secretName"] == "my-ray-token"
    assert "rel-openft-ray-auth" not in [s["metadata"]["name"] for s in of_kind(external, "Secret")]


# --- Ray --------------------------------------------------------------------------------


def test_the_head_runs_no_work_and_exposes_its_ports(default: Manifests) -> None:
    head = ray_cluster(default)["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    assert head["headService"]["metadata"]["name"] == "rel-openft-ray-head-svc"
    c = head["template"]["spec"]["containers"][0]  # the Ray container; then the keeper
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == \
        {"gcs": 6379, "dashboard": 8265, "serve": 8000, "metrics": 8080}
    assert ray_cluster(default)["spec"]["rayVersion"] == "2.60.0"


def test_gpu_worker_groups_request_gpus_and_tolerate_gpu_nodes(production: Manifests) -> None:
    [group] = ray_cluster(production)["spec"]["workerGroupSpecs"]
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (0, 1, 4)
    assert group["rayStartParams"]["num-gpus"] == "8"
    spec = group["template"]["spec"]
    [c] = spec["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        spec["tolerations"]
    assert spec["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert "ephemeral" in volumes["model-cache"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["dshm"] == "/dev/shm"
    assert mounts["model-cache"] == env_of(c)["OPENFT_MODEL_CACHE_DIR"]["value"]
    assert ray_cluster(production)["spec"]["enableInTreeAutoscaling"] is True


def test_a_gpu_group_without_tolerations_gets_the_gpu_toleration() -> None:
    group = {"name": "a100", "replicas": 1, "minReplicas": 1, "maxReplicas": 1, "gpus": 1}
    manifests = render([], {"ray.workerGroups": [group]})
    [worker] = ray_cluster(manifests)["spec"]["workerGroupSpecs"]
    assert worker["template"]["spec"]["tolerations"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"] == \
        {"nvidia.com/gpu": 1}


def test_cpu_groups_ask_for_no_gpu(default: Manifests) -> None:
    for group in ray_cluster(default)["spec"]["workerGroupSpecs"]:
        [c] = group["template"]["spec"]["containers"]
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
        assert "num-gpus" not in group["rayStartParams"]
        assert "tolerations" not in group["template"]["spec"]


def ray_checksums(manifests: Manifests) -> set[str]:
    cluster = ray_cluster(manifests)["spec"]
    templates = [cluster["headGroupSpec"]["template"]] + \
        [g["template"] for g in cluster["workerGroupSpecs"]]
    return {t["metadata"]["annotations"]["checksum/config"] for t in templates}


def test_helm_upgrade_rolls_the_ray_pods_when_their_config_changes(default: Manifests) -> None:
    assert ray_cluster(default)["spec"]["upgradeStrategy"] == {"type": "Recreate"}
    [before] = ray_checksums(default)
    for change in ({"s3.region": "eu-west-1"}, {"image.ray.tag": "0.1.1"},
                   {"ray.head.shmSize": "4Gi"}):
        [after] = ray_checksums(render([], change))
        assert after != before, change
    # Scaling a group is not a reason to recreate the cluster (and kill running jobs).
    [scaled] = ray_checksums(render([], {"ray.workerGroups": [
        {"name": "cpu", "replicas": 3, "minReplicas": 1, "maxReplicas": 4, "gpus": 0,
         "resources": {"requests": {"cpu": "4", "memory": "16Gi"},
                       "limits": {"cpu": "4", "memory": "16Gi"}},
         "shmSize": "4Gi", "modelCache": {"type": "emptyDir", "size": "50Gi"}}]}))
    assert scaled == before


def test_an_api_config_change_rolls_the_api(default: Manifests) -> None:
    def checksum(manifests: Manifests) -> str:
        [d] = of_kind(manifests, "Deployment")
        return d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum(render([], {"serving.config.max_model_len": 2048})) != checksum(default)
    assert checksum(render([], {"serving.token.existingSecret": "mine"})) != checksum(default)
    assert checksum(render([], {"api.replicas": 3})) == checksum(default)  # scaling only


# --- base models and serving ----------------------------------------------------------------


def test_one_model_list_feeds_the_api_and_serving(production: Manifests) -> None:
    from serving.config import ServingConfig

    api_env = env_of(container_named(production, "api"))
    api_models = json.loads(api_env["OPENFT_BASE_MODELS"]["value"])
    command = container_named(production, "serving-deploy")["command"]
    config = ServingConfig.model_validate_json(command[command.index("--config") + 1])
    assert {m.id: m.model_dump(exclude={"id"}, exclude_unset=True) for m in config.base_models} == \
        api_models
    assert api_models["Qwen2.5-72B-Instruct"]["tensor_parallel_size"] == 8
    assert (config.host, config.port) == ("0.0.0.0", 8000)
    assert config.s3_bucket == api_env["OPENFT_S3_BUCKET"]["value"] == "example-company-openft"
    assert config.autoscaling == {"min_replicas": 1, "max_replicas": 4}
    # The PVC holding volume_path models is mounted read-only where they are read.
    for name in ("api", "ray-head", "ray-worker"):
        mounts = {m["name"]: m for m in container_named(production, name)["volumeMounts"]}
        assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}


def test_a_volume_model_without_a_volume_is_refused() -> None:
    error = render_error([], {"models.base": [{"id": "m", "volume_path": "/models/m"}]})
    assert "models.volume.claimName" in error


def test_serving_is_deployed_through_the_jobs_api_never_ray_init(rendered: dict[str, Manifests]
                                                                 ) -> None:
    for manifests in rendered.values():
        [job] = [j for j in of_kind(manifests, "Job") if "post-install" in hook_of(j)
                 and j["metadata"]["name"].endswith("serving-deploy")]
        assert hook_of(job) == {"post-install", "post-upgrade"}
        assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["activeDeadlineSeconds"] > 0
        [c] = job["spec"]["template"]["spec"]["containers"]
        assert c["command"][:5] == ["python", "-m", "serving.deploy", "--submit",
                                    "http://rel-openft-ray-head-svc:8265"]
        assert "--address" not in c["command"]
        token = env_of(c)["OPENFT_RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token["key"] == "auth_token"


# --- migrations and the database ---------------------------------------------------------------


def migration_job(manifests: Manifests) -> dict[str, Any]:
    [job] = [j for j in of_kind(manifests, "Job") if j["metadata"]["name"].endswith("-migrate")]
    return job


def test_migrations_run_in_a_hook_before_the_api(default: Manifests, evaluation: Manifests) -> None:
    job = migration_job(default)
    assert hook_of(job) == {"pre-install", "pre-upgrade"}
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == \
        {"before-hook-creation", "hook-succeeded"}
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "service.migrate"]
    # Pre-install hooks run before the release's own objects: only a Secret made beforehand.
    database = env_of(c)["OPENFT_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert database == {"name": "openft-database", "key": "database-url"}
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]
    # The bundled database is a release object: migrate once it exists.
    assert hook_of(migration_job(evaluation)) == {"post-install", "pre-upgrade"}
    deploy = named(default, "Job", "rel-openft-serving-deploy")["metadata"]["annotations"]
    assert int(annotations["helm.sh/hook-weight"]) < int(deploy["helm.sh/hook-weight"])


def test_no_database_secret_no_render() -> None:
    error = render_error([], {"database.existingSecret": ""})
    assert "database.existingSecret is required" in error and "evaluation.enabled" in error


def test_evaluation_bundles_postgresql_never_sqlite(evaluation: Manifests,
                                                   default: Manifests) -> None:
    stateful = {s["metadata"]["name"]: s for s in of_kind(evaluation, "StatefulSet")}
    assert set(stateful) == {"rel-openft-postgresql", "rel-openft-seaweedfs"}
    assert not of_kind(default, "StatefulSet")
    secrets = {s["metadata"]["name"]: s for s in of_kind(evaluation, "Secret")}
    url = base64.b64decode(secrets["rel-openft-postgresql"]["data"]["database-url"]).decode()
    assert url.startswith("postgresql+psycopg2://openft:")
    assert url.endswith("@rel-openft-postgresql:5432/openft")
    api = env_of(container_named(evaluation, "api"))
    assert api["OPENFT_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == \
        {"name": "rel-openft-postgresql", "key": "database-url"}
    assert api["OPENFT_S3_ENDPOINT_URL"]["value"] == "http://rel-openft-seaweedfs:8333"
    weed = container_named(evaluation, "seaweedfs")["command"]
    assert weed[:2] == ["weed", "server"] and "-s3" in weed


@pytest.mark.parametrize("name", FILES)
def test_no_rendered_environment_holds_a_sqlite_url(rendered: dict[str, Manifests],
                                                    name: str) -> None:
    assert "sqlite" not in render_text(values_files(name)).lower()
    for where, c in containers(rendered[name]):
        if c["name"] in ("api", "migrate"):
            assert "valueFrom" in env_of(c)["OPENFT_DATABASE_URL"], where


def test_evaluation_refuses_an_external_database_too() -> None:
    error = render_error([VALUES_FILES["evaluation"]], {"database.existingSecret": "db"})
    assert "evaluation.enabled bundles its own PostgreSQL" in error


# --- images, names, pull secrets, notes, tests, metrics -----------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_every_image_is_pinned(rendered: dict[str, Manifests], name: str) -> None:
    for where, c in containers(rendered[name]):
        repository, _, tag = c["image"].rpartition(":")
        assert repository and tag and tag != "latest", (where, c["image"])
        if repository.endswith(("openft-api", "openft-ray")):
            assert tag == APP_VERSION, (where, c["image"])


def test_the_image_tag_follows_values() -> None:
    manifests = render([], {"image.api.tag": "1.2.3"})
    assert container_named(manifests, "api")["image"] == "openft-api:1.2.3"
    assert container_named(manifests, "ray-head")["image"] == f"openft-ray:{APP_VERSION}"


def names_in(manifests: Manifests) -> list[str]:
    found = [m["metadata"]["name"] for m in manifests]
    found.append(ray_cluster(manifests)["spec"]["headGroupSpec"]["headService"]["metadata"]["name"])
    return found


def test_fullname_override_and_63_character_names() -> None:
    overridden = render([], {"fullnameOverride": "ft"})
    assert "ft-api" in names_in(overridden) and "ft-ray" in names_in(overridden)
    env = env_of(container_named(overridden, "api"))
    assert env["OPENFT_RAY_ADDRESS"]["value"] == "http://ft-ray-head-svc:8265"
    # A release named after the chart is not repeated: "openft-prod", not "openft-prod-openft".
    assert "openft-prod-api" in names_in(render([], release="openft-prod"))
    long_release = "a-very-long-release-name-for-an-install-of-fine-tuning-x"[:53]
    long_names = names_in(render([], release=long_release))
    assert all(len(n) <= 63 and not n.endswith("-") for n in long_names), long_names
    assert any(n.endswith("-ray-head-svc") for n in long_names)


@pytest.mark.parametrize("name", FILES)
def test_image_pull_secrets_reach_every_pod(name: str) -> None:
    manifests = render(values_files(name), {"imagePullSecrets": ["regcred", "mirror"]})
    for where, template in pod_templates(manifests):
        assert template["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}], \
            where


def test_notes_say_how_to_get_a_key_and_call_the_api() -> None:
    out = subprocess.run([str(helm_binary()), "install", "rel", str(CHART), "--namespace",
                          "openft", "--dry-run=client"],
                         capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "get secret rel-openft-api-keys" in notes
    assert "curl -H \"Authorization: Bearer $OPENAI_API_KEY\"" in notes
    assert "base_url" in notes and "OpenAI()" in notes


def test_helm_test_calls_v1_models_with_a_key_from_the_secret(default: Manifests) -> None:
    [pod] = [p for p in of_kind(default, "Pod") if "test" in hook_of(p)]
    [c] = pod["spec"]["containers"]
    assert c["command"][:2] == ["python", "-c"] and "/v1/models" in c["command"][2]
    env = env_of(c)
    assert env["OPENFT_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "rel-openft-api-keys"
    assert env["OPENFT_TEST_API_URL"]["value"] == "http://rel-openft-api:80"
    compile(c["command"][2], "helm-test", "exec")


def test_metrics_monitors_are_off_by_default_and_on_in_production(default: Manifests,
                                                                  production: Manifests) -> None:
    assert not [m for m in default if m["kind"] in PROMETHEUS_OPERATOR_KINDS]
    [service_monitor] = of_kind(production, "ServiceMonitor")
    [endpoint] = service_monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    service = named(production, "Service", "rel-openft-api")
    assert selects(service_monitor["spec"]["selector"], service["metadata"]["labels"])
    [pod_monitor] = of_kind(production, "PodMonitor")
    assert [e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    # vLLM's adapter-list series (adapter keys as label values) never reaches Prometheus.
    [drop] = pod_monitor["spec"]["podMetricsEndpoints"][0]["metricRelabelings"]
    assert (drop["action"], drop["regex"]) == ("drop", "ray_vllm_lora_requests_info")
    cluster = ray_cluster(production)["spec"]
    for template in [cluster["headGroupSpec"]["template"]] + \
            [g["template"] for g in cluster["workerGroupSpecs"]]:
        assert selects(pod_monitor["spec"]["selector"], template["metadata"]["labels"])
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == 8080


@pytest.mark.parametrize("name", FILES)
def test_standard_labels_on_every_object(rendered: dict[str, Manifests], name: str) -> None:
    for m in rendered[name]:
        labels = m["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, (m["kind"], m["metadata"]["name"], key)


def undocumented_values(text: str) -> list[str]:
    """Keys of a values file that carry a value but no comment: neither on the line above
    nor on an ancestor's (a documented block, such as ``resources`` or a list of worker
    groups, documents what it holds)."""
    lines = text.splitlines()
    stack: list[tuple[int, bool]] = []
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(-\s+)?([A-Za-z_][\w.-]*):\s*(.*)$", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent = len(m.group(1)) + len(m.group(2) or "")
        documented = i > 0 and lines[i - 1].strip().startswith("#")
        floor = len(m.group(1)) if m.group(2) else indent  # a list item leaves its siblings
        while stack and stack[-1][0] >= floor:
            stack.pop()
        if m.group(4).strip() and not documented and not any(d for _, d in stack):
            out.append(f"line {i + 1}: {line.strip()}")
        stack.append((indent, documented))
    return out


def test_every_value_is_documented() -> None:
    assert undocumented_values((CHART / "values.yaml").read_text()) == []
    # The check itself: an undocumented setting is caught, a documented block's leaves are not.
    assert undocumented_values("api:\n  # -- documented\n  replicas: 1\n  port: 80\n") == \
        ["line 4: port: 80"]
    assert undocumented_values("# -- limits\nresources:\n  limits: {cpu: 1}\n") == []


def test_the_head_keeps_serving_deployed_without_recreating_ray_for_a_serving_change() -> None:
    """The head pod's sidecar deploys serving again after a head replacement; it reads the
    config from a ConfigMap, so a changed serving knob reaches it without touching the Ray
    pods (KubeRay's Recreate would end every training run)."""
    before = render([], {"serving.config.max_lora_rank": 16})
    after = render([], {"serving.config.max_lora_rank": 32})
    assert ray_cluster(before) == ray_cluster(after)
    [config_map] = of_kind(after, "ConfigMap")
    assert json.loads(config_map["data"]["serving.json"])["max_lora_rank"] == 32
    head = ray_cluster(after)["spec"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["name"] == "ray-head"  # KubeRay's Ray container is the first
    [keeper] = [c for c in head["containers"] if c["name"] == "serving-keeper"]
    command = keeper["command"]
    assert command[:4] == ["python", "-m", "serving.deploy", "--submit"]
    assert command[4] == "http://127.0.0.1:8265" and "--keep-deployed" in command
    config_path = command[command.index("--config") + 1]
    [mount] = [m for m in keeper["volumeMounts"] if config_path.startswith(m["mountPath"])]
    [volume] = [v for v in head["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert [e["name"] for e in keeper["env"]] == ["OPENFT_RAY_AUTH_TOKEN", "OPENFT_SERVING_TOKEN"]
    assert all("secretKeyRef" in e["valueFrom"] for e in keeper["env"])
