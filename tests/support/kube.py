"""What Kubernetes and KubeRay do with rendered manifests, done here so the chart's pods can run
as processes: resolve a container's environment from Secrets, map Service addresses onto
loopback ports, and spell the ``ray start`` command KubeRay builds from a group's spec.

Pure functions over the parsed YAML; the end-to-end chart test (tests/e2e/test_chart_wiring.py)
starts the processes.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from typing import Any

Manifest = dict[str, Any]


def find(manifests: Iterable[Manifest], kind: str, name_suffix: str = "") -> list[Manifest]:
    """Objects of ``kind`` whose name ends with ``name_suffix``."""
    return [m for m in manifests
            if m.get("kind") == kind and m["metadata"]["name"].endswith(name_suffix)]


def one(manifests: Iterable[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    found = find(manifests, kind, name_suffix)
    assert len(found) == 1, f"{len(found)} {kind} named *{name_suffix}"
    return found[0]


def hooks(manifests: Iterable[Manifest], hook: str) -> list[Manifest]:
    """Objects annotated as the Helm hook ``hook`` (e.g. ``pre-install``, ``test``)."""
    return [m for m in manifests
            if hook in (m["metadata"].get("annotations") or {}).get("helm.sh/hook", "").split(",")]


def pod_spec(workload: Manifest) -> Manifest:
    """The pod spec of a Pod, or of a Deployment's, Job's or StatefulSet's template."""
    return workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]


def rendered_secrets(manifests: Iterable[Manifest]) -> dict[str, dict[str, str]]:
    """The chart's own Secrets, decoded: name -> key -> value.

    >>> rendered_secrets([{"kind": "Secret", "metadata": {"name": "s"},
    ...                    "data": {"a": "eA=="}, "stringData": {"b": "y"}}])
    {'s': {'a': 'x', 'b': 'y'}}
    """
    out: dict[str, dict[str, str]] = {}
    for m in find(manifests, "Secret"):
        data = {k: base64.b64decode(v).decode() for k, v in (m.get("data") or {}).items()}
        out[m["metadata"]["name"]] = {**data, **(m.get("stringData") or {})}
    return out


def container_env(container: Manifest, secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The environment the kubelet gives ``container``: ``envFrom`` Secrets first, then ``env``
    (literal values and ``secretKeyRef``s). A missing Secret or key that is not optional fails,
    as the pod would not start.

    >>> c = {"envFrom": [{"secretRef": {"name": "s"}}],
    ...      "env": [{"name": "A", "value": "1"},
    ...              {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ...              {"name": "C", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k",
    ...                                                            "optional": True}}}]}
    >>> container_env(c, {"s": {"k": "v"}})
    {'k': 'v', 'A': '1', 'B': 'v'}
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source["secretRef"]
        if ref["name"] in secrets:
            env.update(secrets[ref["name"]])
        elif not ref.get("optional"):
            raise KeyError(f"container {container.get('name')}: no Secret {ref['name']}")
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            raise ValueError(f"env {var['name']}: only value and secretKeyRef are understood")
        value = secrets.get(ref["name"], {}).get(ref["key"])
        if value is not None:
            env[var["name"]] = value
        elif not ref.get("optional"):
            raise KeyError(f"env {var['name']}: no key {ref['key']} in Secret {ref['name']}")
    return env


def remap(text: str, endpoints: Mapping[str, str]) -> str:
    """``text`` with each in-cluster ``host:port`` replaced by where it runs here.

    >>> remap("http://rel-ray-head-svc:8265/x", {"rel-ray-head-svc:8265": "127.0.0.1:4001"})
    'http://127.0.0.1:4001/x'
    """
    if not endpoints:
        return text
    pattern = re.compile("|".join(re.escape(k) + r"(?!\d)" for k in
                                  sorted(endpoints, key=len, reverse=True)))
    return pattern.sub(lambda m: endpoints[m.group(0)], text)


def quantity(value: str | int | float) -> float:
    """A Kubernetes CPU or count quantity as a number (``"500m"`` -> 0.5).

    >>> quantity("500m"), quantity("2"), quantity(8)
    (0.5, 2.0, 8.0)
    """
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_start_params(group: Manifest) -> dict[str, str]:
    """What KubeRay passes to ``ray start`` for a head or worker group: the group's
    ``rayStartParams``, with ``num-cpus`` and ``num-gpus`` taken from the Ray container's
    limits when the params leave them out (KubeRay's rule; memory is left to Ray here).

    >>> group = {"rayStartParams": {"num-cpus": "0"}, "template": {"spec": {"containers": [
    ...     {"resources": {"limits": {"cpu": "4", "nvidia.com/gpu": 1}}}]}}}
    >>> ray_start_params(group)
    {'num-cpus': '0', 'num-gpus': '1'}
    """
    params = {k: str(v) for k, v in (group.get("rayStartParams") or {}).items()}
    limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    if "num-cpus" not in params and "cpu" in limits:
        params["num-cpus"] = str(int(quantity(limits["cpu"])))
    if "num-gpus" not in params and "nvidia.com/gpu" in limits:
        params["num-gpus"] = str(int(quantity(limits["nvidia.com/gpu"])))
    return params
