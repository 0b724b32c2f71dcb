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
