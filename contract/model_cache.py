"""A registered base model on this node: fetched once from the bucket, verified, then reused.

This is the one piece of behaviour (not just data) that training workers and serving replicas
share: both need the base model's folder on their own disk, and neither may read another
role's filesystem. It lives in ``contract/`` so that neither role imports the other; it stays
stdlib-only because the S3 client is passed in (any boto3-like object with ``get_object``),
so the API can use it too without pulling in anything heavy.

How one node behaves, whatever number of processes and threads ask at once:

* one ``flock`` per model (``<cache>/.locks/<id>.lock``) serialises them: the first downloads,
  the others wait and then find the files verified;
* the manifest (:func:`contract.bucket.base_model_manifest_key`) is read on every call, so a
  re-registration is noticed; files already verified against the same hash cost one ``stat``;
* each file is fetched in ranged parts, a few in parallel, written at their offsets into
  ``<cache>/.partial/<id>/<name>.partial``; a sidecar records the finished parts, so a
  download killed half way resumes with the parts it has;
* size and sha256 are checked against the manifest before an atomic rename into the model's
  folder; a mismatch deletes the partial and raises :class:`CorruptDownload`.

Everything is left readable by all: Ray workers may run as other users than whoever fetched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol

from contract.base_models import BaseModelManifest, ManifestFile, node_cache_dir
from contract.bucket import base_model_file_key, base_model_manifest_key

DEFAULT_PART_SIZE = 64 * 1024 * 1024
DEFAULT_WORKERS = 4
_READ_CHUNK = 1024 * 1024
_PART_ATTEMPTS = 3
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


class S3Reader(Protocol):
    """What is used of a boto3 S3 client: plain and ranged ``get_object``."""

    def get_object(self, **kwargs: Any) -> Mapping[str, Any]: ...


class BaseModelNotRegistered(LookupError):
    """The bucket has no manifest for this base model: it was never registered (or its
    registration did not finish)."""

    def __init__(self, base_id: str):
        super().__init__(f"base model {base_id!r} is not registered in the bucket "
                         f"(no {base_model_manifest_key(base_id)}); register it with "
                         f"`python -m service.base_models register --id {base_id} FOLDER`")
        self.base_id = base_id


class CorruptDownload(OSError):
    """What was downloaded does not match the manifest (a changed object, a bad transfer).
    An ``OSError``: callers that treat an unreadable model folder as a failed read catch it
    with the rest; a later call fetches again."""


def ensure_local(s3: S3Reader, bucket: str, base_id: str, cache_dir: Path | None = None,
                 only: Collection[str] | None = None, *, part_size: int = DEFAULT_PART_SIZE,
                 workers: int = DEFAULT_WORKERS) -> Path:
    """The local folder holding base model ``base_id`` (every file, or those named in
    ``only`` that it has), fetched into this node's cache if it is not there yet."""
    cache = Path(cache_dir) if cache_dir is not None else node_cache_dir()
    slug = base_id.replace("/", "--")
    folder, staging = cache / slug, cache / ".partial" / slug
    for d in (cache, cache / ".locks", cache / ".state", folder, staging):
        _mkdir_shared(d)
    with _model_lock(cache / ".locks" / f"{slug}.lock"):
        manifest = _read_manifest(s3, bucket, base_id)
        state_path = cache / ".state" / f"{slug}.json"
        verified = _drop_stale(folder, _read_json(state_path), manifest)
        _write_json(state_path, verified)
        wanted = manifest.subset(None if only is None else tuple(only))
        for f in wanted:
            target = _inside(folder, f.name)
            if verified.get(f.name) == f.sha256 and _size(target) == f.size:
                continue
            verified.pop(f.name, None)
            _fetch_file(s3, bucket, base_id, f, target, _inside(staging, f.name + ".partial"),
                        part_size=part_size, workers=workers)
            verified[f.name] = f.sha256
            _write_json(state_path, verified)
    return folder


def _read_manifest(s3: S3Reader, bucket: str, base_id: str) -> BaseModelManifest:
    try:
        body = s3.get_object(Bucket=bucket, Key=base_model_manifest_key(base_id))["Body"]
    except Exception as exc:  # botocore's ClientError, unknown here: recognised by its code
        if getattr(exc, "response", {}).get("Error", {}).get("Code") in _NOT_FOUND_CODES:
            raise BaseModelNotRegistered(base_id) from exc
        raise
    return BaseModelManifest.model_validate_json(body.read())


def _drop_stale(folder: Path, verified: dict[str, str],
                manifest: BaseModelManifest) -> dict[str, str]:
    """Forget (and delete) what an earlier registration had that this one no longer lists: a
    left-over shard next to a new index would be loaded as part of the model."""
    listed = {f.name: f.sha256 for f in manifest.files}
    for name in [n for n in verified if n not in listed]:
        with contextlib.suppress(FileNotFoundError, CorruptDownload):
            _inside(folder, name).unlink()
        del verified[name]
    return {n: h for n, h in verified.items() if listed[n] == h}


def _fetch_file(s3: S3Reader, bucket: str, base_id: str, f: ManifestFile, target: Path,
                partial: Path, *, part_size: int, workers: int) -> None:
    """Download one file into ``partial`` (resuming the parts recorded there), check it,
    and rename it into place."""
    _mkdir_shared(partial.parent)
    _mkdir_shared(target.parent)
    sidecar = partial.with_name(partial.name.removesuffix(".partial") + ".parts")
    identity = {"sha256": f.sha256, "size": f.size, "part_size": part_size}
    record = _read_json(sidecar)
    done: set[int] = set(record.get("done", [])) if _same(record, identity) else set()
    if not done:
        partial.unlink(missing_ok=True)
    parts = [(i, off, min(part_size, f.size - off))
             for i, off in enumerate(range(0, f.size, part_size)) if i not in done]
    key = base_model_file_key(base_id, f.name)
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, f.size)
        progress = threading.Lock()

        def fetch(part: tuple[int, int, int]) -> None:
            _fetch_part(s3, bucket, key, fd, part[1], part[2])
            with progress:
                done.add(part[0])
                _write_json(sidecar, {**identity, "done": sorted(done)})

        _run_parallel(fetch, parts, workers)
    finally:
        os.close(fd)
    digest = _sha256(partial)
    if digest != f.sha256:
        partial.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        raise CorruptDownload(f"{base_id}/{f.name}: downloaded sha256 {digest} does not match "
                              f"the manifest's {f.sha256}; the partial file was deleted")
    os.chmod(partial, 0o644)
    os.replace(partial, target)
    sidecar.unlink(missing_ok=True)


def _fetch_part(s3: S3Reader, bucket: str, key: str, fd: int, offset: int, length: int) -> None:
    """One ranged GET written at its offset; a short or broken body is retried."""
    for attempt in range(_PART_ATTEMPTS):
        try:
            body = s3.get_object(Bucket=bucket, Key=key,
                                 Range=f"bytes={offset}-{offset + length - 1}")["Body"]
            written = 0
            while written < length:
                chunk = body.read(min(_READ_CHUNK, length - written))
                if not chunk:
                    raise CorruptDownload(f"{key}: the object ended after "
                                          f"{offset + written} bytes, {length - written} short")
                os.pwrite(fd, chunk, offset + written)
                written += len(chunk)
            return
        except Exception:
            if attempt == _PART_ATTEMPTS - 1:
                raise


def _run_parallel(fn: Any, items: list[Any], workers: int) -> None:
    """Run ``fn`` over ``items`` on a few threads; on the first failure, start no more (the
    parts already running finish and are recorded) and raise it."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in pending:
            fut.cancel()
    for fut in futures:
        if not fut.cancelled() and fut.exception() is not None:
            raise fut.exception()  # type: ignore[misc]


@contextlib.contextmanager
def _model_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock``: each call opens its own file description, so it excludes the
    other threads of this process as well as other processes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        with contextlib.suppress(PermissionError):
            os.chmod(path, 0o666)  # another user's process must be able to take it too
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _inside(folder: Path, name: str) -> Path:
    """``folder/name``, refusing a manifest name that would escape the folder."""
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()) or path == folder.resolve():
        raise CorruptDownload(f"the manifest names {name!r}, which is outside the model folder")
    return folder / name


def _mkdir_shared(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            os.chmod(path, 0o755)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _same(record: dict[str, Any], identity: dict[str, Any]) -> bool:
    return all(record.get(k) == v for k, v in identity.items())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Atomically: a reader (or a resumed download) never sees half a record."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(value, sort_keys=True))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
