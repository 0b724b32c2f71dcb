"""Registering a base model in the bucket, and the API's own view of one (tokenizer, config).

The upload writes every file first and the manifest last: a node that sees the manifest can
fetch everything it lists (:mod:`contract.model_cache`). The API itself never needs weights:
it counts tokens with the tokenizer and chat template and reads ``config.json``, so it fetches
only :data:`~contract.base_models.TOKENIZER_FILES` into its own cache.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from contract.base_models import TOKENIZER_FILES, BaseModelManifest, ManifestFile
from contract.bucket import base_model_file_key, base_model_manifest_key, base_model_prefix
from contract.model_cache import BaseModelNotRegistered, ensure_local
from service.settings import Settings
from service.storage import BlobStore

DEFAULT_PART_SIZE = 64 * 1024 * 1024
_BASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


class NotAModelFolder(ValueError):
    """What was named for registration is not a Hugging Face model folder."""


class BaseModelUnavailable(LookupError):
    """A job names a base model the API cannot read: not configured any more, or configured
    as a bucket model that was never registered."""

    def __init__(self, base_id: str, reason: str):
        super().__init__(f"The base model {base_id} is not available: {reason}")
        self.base_id = base_id


@dataclass
class Registration:
    """What :func:`register` did, for the CLI to print."""

    manifest: BaseModelManifest
    uploaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    """Files the bucket already held with the same hash (an earlier registration)."""
    removed: list[str] = field(default_factory=list)
    """Objects of an earlier registration this one no longer has."""

    @property
    def unchanged(self) -> bool:
        return not self.uploaded and not self.removed


def folder_manifest(base_id: str, folder: Path) -> BaseModelManifest:
    """Sizes and sha256 of every file of ``folder``; hidden files and folders (``.cache/``
    of ``hf download``, ``.gitattributes``, make run's marker) are not part of the model."""
    if not _BASE_ID.fullmatch(base_id):
        raise NotAModelFolder(f"{base_id!r} is not a usable model id (letters, digits, "
                              "'.', '_', '-', at most one '/')")
    if not (folder / "config.json").is_file():
        raise NotAModelFolder(f"{folder} is not a Hugging Face model folder (no config.json)")
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return BaseModelManifest(id=base_id, files=[
        ManifestFile(name=p.relative_to(folder).as_posix(), size=p.stat().st_size,
                     sha256=_sha256(p)) for p in files])


def register(blobs: BlobStore, base_id: str, folder: Path, *,
             part_size: int = DEFAULT_PART_SIZE) -> Registration:
    """Upload ``folder`` under ``base/{base_id}/`` (multipart above ``part_size``), then its
    manifest. Idempotent: files the current registration already has with the same hash are
    not uploaded again, so re-running after an interruption or a small change is cheap."""
    manifest = folder_manifest(base_id, folder)
    blobs.ensure_bucket()  # an operator may register before the API first started
    previous = registered_manifest(blobs, base_id)
    done = Registration(manifest)
    if previous == manifest:
        done.kept = [f.name for f in manifest.files]
        return done
    old = set(previous.files) if previous else set()
    if previous is not None:
        # No node may verify new bytes against the old hashes while the upload runs.
        blobs.delete(base_model_manifest_key(base_id))
    for f in manifest.files:
        if f in old:
            done.kept.append(f.name)
            continue
        blobs.upload_file(base_model_file_key(base_id, f.name), folder / f.name, part_size)
        done.uploaded.append(f.name)
    blobs.put(base_model_manifest_key(base_id), manifest.model_dump_json(indent=1).encode(),
              "application/json")
    listed = {base_model_file_key(base_id, f.name) for f in manifest.files}
    listed.add(base_model_manifest_key(base_id))
    for key in blobs.list_keys(base_model_prefix(base_id)):
        if key not in listed:
            blobs.delete(key)
            done.removed.append(key.removeprefix(base_model_prefix(base_id)))
    return done


def registered_manifest(blobs: BlobStore, base_id: str) -> BaseModelManifest | None:
    """The manifest in the bucket; None if the model is not (completely) registered."""
    key = base_model_manifest_key(base_id)
    if not blobs.exists(key):
        return None
    try:
        return BaseModelManifest.model_validate_json(blobs.get(key))
    except ValidationError:
        return None


def tokenizer_dir(settings: Settings, blobs: BlobStore, base_id: str) -> Path:
    """A local folder holding the base model's tokenizer, chat template and config: the
    shared volume as it is, else those files fetched from the bucket into the API's cache
    (not the weights). Raises :class:`BaseModelUnavailable`."""
    config = settings.base_model_configs().get(base_id)
    if config is None:
        raise BaseModelUnavailable(base_id, "it is no longer configured (OPENFT_BASE_MODELS)")
    if config.volume_path is not None:
        return Path(config.volume_path)
    try:
        return ensure_local(blobs.client, blobs.bucket, base_id, settings.api_model_cache_dir,
                            only=TOKENIZER_FILES)
    except BaseModelNotRegistered as e:
        raise BaseModelUnavailable(base_id, "it is not registered in the bucket; an operator "
                                   "registers it with `python -m service.base_models register "
                                   f"--id {base_id} FOLDER`") from e


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
