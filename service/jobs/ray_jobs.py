"""Ray's Jobs API over HTTP: the API process never imports Ray to launch or watch training.

Why the Jobs API rather than a detached actor: a Ray job is a process tree that Ray owns,
outlives the API process, has a stable submission id we choose (so two API replicas cannot
launch the same job twice: Ray refuses a duplicate id), a status we can ask for after a
restart, and a stop call that tears down its Train workers.

The cluster's resources come from the same port: Ray's state API lists the nodes with their
totals, and what is held is summed from the placement groups that are placed (Train worker
groups, Serve LLM replicas) and the alive actors outside them (other Serve replicas). The
dashboard has no endpoint with free resources as numbers for both autoscaler versions.

A cluster with token auth (``RAY_AUTH_MODE=token``, Ray 2.52+) refuses every call without
``Authorization: Bearer <token>`` (401 without one, 403 with a wrong one), the header Ray's
own SDK sends (``ray._private.authentication``); :class:`RayJobs` sends it on every call.
"""

from __future__ import annotations

from typing import Any

import httpx

from service.context import ClusterNode, Resources, RunState
from service.settings import Settings

STATE_API_LIMIT = 10_000
"""Rows asked of Ray's state API per list; its default (100) would drop actors on a busy
cluster."""


class RayJobs:
    """:class:`RayRuns` on Ray's Jobs API (the dashboard's HTTP port)."""

    def __init__(self, dashboard_url: str, timeout: float = 10.0,
                 auth_token: str | None = None):
        headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
        self._http = httpx.Client(base_url=dashboard_url.rstrip("/"), timeout=timeout,
                                  headers=headers)

    @classmethod
    def from_settings(cls, settings: Settings) -> RayJobs:
        token = settings.ray_auth_token
        return cls(settings.resolved_ray_address,
                   auth_token=token.get_secret_value() if token else None)

    def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the dashboard answers an authenticated call within ``timeout``
        (``GET /api/version``: cheap, and refused like any other call without the token)."""
        r = self._http.get("/api/version", timeout=timeout)
        if r.status_code in (401, 403):
            raise PermissionError(f"the Ray dashboard refused the auth token ({r.status_code}): "
                                  "check OPENFT_RAY_AUTH_TOKEN")
        r.raise_for_status()

    def submit(self, submission_id: str, entrypoint: str, env_vars: dict[str, str],
               metadata: dict[str, str]) -> str:
        body: dict[str, Any] = {
            "entrypoint": entrypoint,
            "submission_id": submission_id,
            "runtime_env": {"env_vars": env_vars},
            "metadata": metadata,
        }
        r = self._http.post("/api/jobs/", json=body)
        if r.status_code >= 400 and "already exists" not in r.text:
            raise RuntimeError(f"Ray refused job {submission_id}: {r.status_code} {r.text[:300]}")
        return submission_id

    def status(self, submission_id: str) -> RunState | None:
        r = self._http.get(f"/api/jobs/{submission_id}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        info = r.json()
        return RunState(info["status"], info.get("message") or "")

    def stop(self, submission_id: str) -> None:
        r = self._http.post(f"/api/jobs/{submission_id}/stop")
        if r.status_code not in (200, 404):
            r.raise_for_status()

    def cluster(self) -> list[ClusterNode] | None:
        try:
            nodes = self._list("nodes", state="ALIVE")
            groups = self._list("placement_groups", state="CREATED")
            actors = self._list("actors", state="ALIVE")
        except (httpx.HTTPError, KeyError, ValueError):
            return None
        # A head lists itself a few seconds after its dashboard answers: no node yet is a
        # cluster still starting, not an empty one.
        return cluster_nodes(nodes, groups, actors) if nodes else None

    def _list(self, resource: str, state: str) -> list[dict[str, Any]]:
        r = self._http.get(f"/api/v0/{resource}", params={
            "detail": "1", "limit": str(STATE_API_LIMIT), "filter_keys": "state",
            "filter_predicates": "=", "filter_values": state})
        r.raise_for_status()
        rows: list[dict[str, Any]] = r.json()["data"]["result"]["result"]
        return rows

    def close(self) -> None:
        self._http.close()


def cluster_nodes(nodes: list[dict[str, Any]], groups: list[dict[str, Any]],
                  actors: list[dict[str, Any]]) -> list[ClusterNode]:
    """Nodes with their free resources: the totals minus placed bundles and the actors
    that hold resources outside a placement group (an actor inside one uses its bundle).

    >>> node = {"node_id": "n1", "resources_total": {"CPU": 4.0, "GPU": 2.0,
    ...         "accelerator_type:H100": 1.0, "memory": 8e9}}
    >>> group = {"bundles": [{"node_id": "n1", "unit_resources": {"CPU": 1.0, "GPU": 1.0}}]}
    >>> actor = {"node_id": "n1", "placement_group_id": None,
    ...          "required_resources": {"CPU": 0.5}}
    >>> [n] = cluster_nodes([node], [group], [actor])
    >>> n.available, n.accelerator_type
    (Resources(cpus=2.5, gpus=1.0, memory=8000000000.0), 'H100')
    """
    held: dict[str, dict[str, float]] = {n["node_id"]: {} for n in nodes}
    holdings = [(b.get("node_id"), b.get("unit_resources") or {})
                for g in groups for b in g.get("bundles") or []]
    holdings += [(a.get("node_id"), a.get("required_resources") or {})
                 for a in actors if not a.get("placement_group_id")]
    for node_id, resources in holdings:
        if node_id in held:
            for name, amount in resources.items():
                held[node_id][name] = held[node_id].get(name, 0.0) + float(amount)
    out = []
    for n in nodes:
        total = n.get("resources_total") or {}
        free = {k: max(0.0, float(v) - held[n["node_id"]].get(k, 0.0)) for k, v in total.items()}
        out.append(ClusterNode(n["node_id"], Resources.of(total), Resources.of(free),
                               _accelerator_type(n)))
    return out


def _accelerator_type(node: dict[str, Any]) -> str | None:
    """Ray names it as a resource ``accelerator_type:<type>`` and, lately, a node label."""
    label = (node.get("labels") or {}).get("ray.io/accelerator-type")
    if label:
        return str(label)
    prefix = "accelerator_type:"
    return next((k[len(prefix):] for k in node.get("resources_total") or {}
                 if k.startswith(prefix)), None)
