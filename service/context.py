"""What a running API process holds: database, bucket, keys, clients. Built in the lifespan.

:class:`RayRuns` is all it asks of Ray, so the API never imports Ray and tests fake it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import httpx

from service.auth import KeyRing
from service.db import Database
from service.settings import Settings
from service.storage import BlobStore

RunStatus = Literal["PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"]
"""Ray's job statuses (``ray.job_submission.JobStatus``)."""


class RunState(NamedTuple):
    status: RunStatus
    message: str
    """Ray's message, for a failed run the tail of its error."""


@dataclass(frozen=True)
class Resources:
    """Ray's logical resources of a node, the three openft schedules by."""

    cpus: float = 0.0
    gpus: float = 0.0
    memory: float = 0.0
    """Bytes (Ray's ``memory`` resource: what the node offers tasks and actors)."""

    @classmethod
    def of(cls, ray_resources: dict[str, float]) -> Resources:
        """From Ray's resource dict (``{"CPU": 4.0, "GPU": 8.0, "memory": ...}``)."""
        return cls(float(ray_resources.get("CPU", 0)), float(ray_resources.get("GPU", 0)),
                   float(ray_resources.get("memory", 0)))


@dataclass(frozen=True)
class ClusterNode:
    """One alive Ray node as :meth:`~service.context.RayRuns.cluster` reports it."""

    node_id: str
    total: Resources
    available: Resources
    """What nothing holds now (serving's replicas and running runs excluded)."""
    accelerator_type: str | None = None
    """``H100``, ``A100-80G``, ... when Ray reports one."""


class RayRuns(Protocol):
    """All the scheduler and the API ask of Ray: :class:`service.jobs.ray_jobs.RayJobs`
    answers over Ray's Jobs API, tests with a fake."""

    def submit(self, submission_id: str, entrypoint: str, env_vars: dict[str, str],
               metadata: dict[str, str]) -> str:
        """Start ``entrypoint`` as run ``submission_id``; a second submit of the same id is
        a no-op. Raises while Ray cannot take it (the next tick tries again)."""
        ...

    def status(self, submission_id: str) -> RunState | None:
        """The run's state, or None if Ray does not know it (the cluster restarted)."""
        ...

    def stop(self, submission_id: str) -> None:
        """Stop the run if Ray still knows it."""
        ...

    def cluster(self) -> list[ClusterNode] | None:
        """The alive nodes with their total and free resources; None while Ray cannot be
        reached (capacity unknown: nothing is refused, nothing launched)."""
        ...

    def ping(self, timeout: float = 2.0) -> None:
        """Raise unless Ray answers (with our credentials) within ``timeout`` seconds: the
        readiness probe's check."""
        ...

    def close(self) -> None: ...


@dataclass
class AppContext:
    settings: Settings
    db: Database
    blobs: BlobStore
    keys: KeyRing
    ray: RayRuns
    serving: httpx.AsyncClient
    started_at: int
    """Creation time reported for base models."""
