"""Bytes under ``files/`` that no row points at, and multipart uploads never finished: both
removed once they are older than a grace period.

They are what a crash leaves: an upload writes its bytes before its row, a delete removes its
row before its bytes (:mod:`service.files.service`), and a process that dies in between, or a
bucket that refuses the delete, leaves bytes nobody lists. The grace period is what makes
sweeping safe: an upload in progress has bytes and no row *yet*, and its bytes are younger
than the grace. Every API process sweeps; two sweeps deleting the same orphan do no harm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from contract.bucket import file_key
from service.db import Database, FileRow
from service.files import idempotency
from service.settings import Settings
from service.storage import BlobStore, PendingUpload, StoredObject

log = logging.getLogger("openft")

FILES_PREFIX = file_key("")
"""``files/``: where uploads keep their bytes (the only prefix this sweeper touches)."""
QUERY_BATCH = 500
"""Keys per ``IN (...)`` query: well under every database's parameter limit."""


@dataclass
class SweepReport:
    orphans_deleted: list[str] = field(default_factory=list)
    uploads_aborted: list[str] = field(default_factory=list)
    keys_forgotten: int = 0
    """Expired ``Idempotency-Key`` rows dropped."""


def orphans(objects: Iterable[StoredObject], rowed: set[str], cutoff: float) -> list[str]:
    """Keys of objects written before ``cutoff`` that no row points at.

    >>> objs = [StoredObject("files/a", 10), StoredObject("files/b", 10),
    ...         StoredObject("files/c", 99)]
    >>> orphans(objs, rowed={"files/a"}, cutoff=50)
    ['files/b']
    """
    return [o.key for o in objects if o.modified < cutoff and o.key not in rowed]


def stale_uploads(uploads: Iterable[PendingUpload], cutoff: float) -> list[PendingUpload]:
    """Multipart uploads begun before ``cutoff``: no live upload takes that long."""
    return [u for u in uploads if u.initiated < cutoff]


def sweep(db: Database, blobs: BlobStore, grace_s: float,
          now: float | None = None) -> SweepReport:
    """One sweep of the ``files/`` prefix; ``now`` (Unix time) defaults to the clock."""
    now = time.time() if now is None else now
    cutoff = now - grace_s
    report = SweepReport()
    old = [o for o in blobs.list_objects(FILES_PREFIX) if o.modified < cutoff]
    with db.session() as session:
        rowed = keys_with_rows(session, [o.key for o in old])
        report.keys_forgotten = idempotency.forget_expired(session, int(now))
    for key in orphans(old, rowed, cutoff):
        blobs.delete(key)
        report.orphans_deleted.append(key)
    for upload in stale_uploads(blobs.list_uploads(FILES_PREFIX), cutoff):
        blobs.abort_upload(upload)
        report.uploads_aborted.append(upload.key)
    return report


def keys_with_rows(session: Session, keys: list[str]) -> set[str]:
    """Those of ``keys`` that a file row points at."""
    found: set[str] = set()
    for i in range(0, len(keys), QUERY_BATCH):
        batch = keys[i:i + QUERY_BATCH]
        found.update(session.scalars(select(FileRow.s3_key).where(FileRow.s3_key.in_(batch))))
    return found


class FileSweeper:
    """Runs :func:`sweep` every ``files_sweep_interval_s`` in the API's lifespan."""

    def __init__(self, db: Database, blobs: BlobStore, settings: Settings) -> None:
        self.db = db
        self.blobs = blobs
        self.interval_s = settings.files_sweep_interval_s
        self.grace_s = settings.files_sweep_grace_s

    async def run_forever(self) -> None:
        while True:
            try:
                report = await asyncio.to_thread(sweep, self.db, self.blobs, self.grace_s)
                if report.orphans_deleted or report.uploads_aborted:
                    log.info("file sweep: deleted %d orphaned objects, aborted %d uploads",
                             len(report.orphans_deleted), len(report.uploads_aborted))
            except Exception:
                # S3 or the database down: the next sweep tries again.
                log.warning("file sweep failed", exc_info=True)
            await asyncio.sleep(self.interval_s)
