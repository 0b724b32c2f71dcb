"""Ray's Jobs API over HTTP: the API process never imports Ray to launch or watch training.

Why the Jobs API rather than a detached actor: a Ray job is a process tree that Ray owns,
outlives the API process, has a stable submission id we choose (so two API replicas cannot
launch the same job twice: Ray refuses a duplicate id), a status we can ask for after a
restart, and a stop call that tears down its Train workers.
"""

from __future__ import annotations

from typing import Any

import httpx

from service.context import RunState


class RayJobs:
    """:class:`RayRuns` on Ray's Jobs API (the dashboard's HTTP port)."""

    def __init__(self, dashboard_url: str, timeout: float = 10.0):
        self._http = httpx.Client(base_url=dashboard_url.rstrip("/"), timeout=timeout)

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

    def close(self) -> None:
        self._http.close()
