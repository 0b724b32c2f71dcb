"""What a running API process holds: database, bucket, keys, clients. Built in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from service.auth import KeyRing
from service.db import Database
from service.jobs.ray_jobs import RayJobs
from service.settings import Settings
from service.storage import BlobStore


@dataclass
class AppContext:
    settings: Settings
    db: Database
    blobs: BlobStore
    keys: KeyRing
    ray: RayJobs
    serving: httpx.AsyncClient
    started_at: int
    """Creation time reported for base models."""
