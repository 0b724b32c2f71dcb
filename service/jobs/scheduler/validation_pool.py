"""Validations beside the scheduler's tick, not inside it.

Validating a 512 MB file takes minutes; done in the tick, it held every other tenant's job
(launches, progress, settling) for as long. The tick now only hands each ``validating_files``
job to this pool and goes on. A bounded number of threads validate; a job is validated by at
most one of them at a time.

Nothing here is the truth: the job row is. A validation that dies (S3 away, a bug) leaves the
job ``validating_files``, and the next tick hands it over again; with several API replicas
each may try, and :func:`~service.jobs.scheduler.rows.claim` lets one work on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from service.jobs.scheduler.validate import Stopped

log = logging.getLogger("openft.scheduler")

Validate = Callable[[str, threading.Event], None]
"""Validate one job (its id), giving up once the event is set."""


class ValidationPool:
    def __init__(self, validate: Validate, threads: int):
        self._validate = validate
        self._executor = ThreadPoolExecutor(max_workers=threads,
                                            thread_name_prefix="openft-validate")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._jobs: dict[str, Future[None]] = {}

    def start(self, job_ids: Iterable[str]) -> None:
        """Validate each job that is not being validated here already; return at once.

        Jobs beyond the pool's threads wait in its queue, oldest first as given.
        """
        with self._lock:
            if self._stop.is_set():
                return
            self._jobs = {job_id: f for job_id, f in self._jobs.items() if not f.done()}
            for job_id in job_ids:
                if job_id not in self._jobs:
                    self._jobs[job_id] = self._executor.submit(self._run, job_id)

    def in_flight(self) -> set[str]:
        """Jobs handed over and not finished (waiting for a thread, or validating)."""
        with self._lock:
            return {job_id for job_id, f in self._jobs.items() if not f.done()}

    def close(self) -> None:
        """Stop: waiting validations are dropped and running ones give up at their next chunk
        of the file, so the process exits promptly; their jobs stay ``validating_files``."""
        with self._lock:
            self._stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _run(self, job_id: str) -> None:
        try:
            self._validate(job_id, self._stop)
        except Stopped:
            log.info("validation of %s stopped by shutdown; the next process takes it up",
                     job_id)
        except Exception:  # one job's trouble must not hold up the others
            log.exception("validation of %s failed; retrying next tick", job_id)
