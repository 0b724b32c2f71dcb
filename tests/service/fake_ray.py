"""Fakes of the two things outside the API process: Ray's Jobs API and the bucket.

:class:`FakeRay` implements :class:`service.jobs.ray_jobs.RayRuns`: a test submits nothing
real, says what Ray reports of a run (``ray.report(sid, "RUNNING")``) and can make Ray forget
it (``ray.forget(sid)``), as a restarted cluster does; ``ray.nodes`` is the cluster it reports
(one CPU node by default, :func:`node` builds others) and ``ray.unreachable`` makes it answer
nothing, as a head that is down does. :class:`MemoryBlobs` holds the bucket
in a dict, with the methods of :class:`service.storage.BlobStore` the service uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from service.context import ClusterNode, Resources, RunState, RunStatus

GIB = 1 << 30


def node(cpus: float = 4, gpus: float = 0, memory_gib: float = 16,
         accelerator: str | None = None, free_cpus: float | None = None,
         free_gpus: float | None = None, name: str = "node") -> ClusterNode:
    """A Ray node, all free unless ``free_cpus`` / ``free_gpus`` say less is."""
    total = Resources(cpus, gpus, memory_gib * GIB)
    free = Resources(cpus if free_cpus is None else free_cpus,
                     gpus if free_gpus is None else free_gpus, memory_gib * GIB)
    return ClusterNode(name, total, free, accelerator)


@dataclass
class Submission:
    entrypoint: str
    env_vars: dict[str, str]
    metadata: dict[str, str]


@dataclass
class FakeRay:
    submitted: dict[str, Submission] = field(default_factory=dict)
    states: dict[str, RunState] = field(default_factory=dict)
    stopped: list[str] = field(default_factory=list)
    refuse: bool = False
    """Submit raises, as a head that is still starting does."""
    nodes: list[ClusterNode] = field(default_factory=lambda: [node()])
    unreachable: bool = False

    def submit(self, submission_id: str, entrypoint: str, env_vars: dict[str, str],
               metadata: dict[str, str]) -> str:
        if self.refuse:
            raise RuntimeError("Ray is not ready")
        self.submitted.setdefault(submission_id, Submission(entrypoint, env_vars, metadata))
        self.states.setdefault(submission_id, RunState("PENDING", ""))
        return submission_id

    def status(self, submission_id: str) -> RunState | None:
        return self.states.get(submission_id)

    def stop(self, submission_id: str) -> None:
        if self.unreachable:
            raise ConnectionError("Ray is unreachable")
        self.stopped.append(submission_id)
        if submission_id in self.states:
            self.states[submission_id] = RunState("STOPPED", "stopped")

    def cluster(self) -> list[ClusterNode] | None:
        return None if self.unreachable else list(self.nodes)

    def ping(self, timeout: float = 2.0) -> None:
        if self.unreachable:
            raise ConnectionError("Ray is unreachable")

    def close(self) -> None:
        pass

    # -- what a test makes Ray say -------------------------------------------------------
    def report(self, submission_id: str, status: RunStatus, message: str = "") -> None:
        assert submission_id in self.submitted, f"{submission_id} was never submitted"
        self.states[submission_id] = RunState(status, message)

    def forget(self, submission_id: str) -> None:
        self.states.pop(submission_id, None)


@dataclass
class MemoryBlobs:
    objects: dict[str, bytes] = field(default_factory=dict)
    endpoint_url: str = "http://memory"
    bucket: str = "openft-test"
    region: str = "us-east-1"
    unreachable: bool = False
    """Writes fail as with the S3 server down."""

    def ensure_bucket(self) -> None:
        pass

    def ping(self) -> None:
        pass

    def upload_stream(self, key: str, stream: IO[bytes]) -> None:
        self.objects[key] = stream.read()

    def put(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> None:
        if self.unreachable:
            raise ConnectionError("the bucket is unreachable")
        self.objects[key] = bytes(body)

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        body = self.objects[key]
        for i in range(0, len(body), chunk_size):
            yield body[i:i + chunk_size]

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def list_keys(self, prefix: str, start_after: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix) and k > start_after)

    def exists(self, key: str) -> bool:
        return key in self.objects
