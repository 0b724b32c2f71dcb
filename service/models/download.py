"""``GET /v1/models/{model}/download``: a fine-tuned model or checkpoint as a streamed ``.tar.gz``.

The archive holds one folder named for the model. A LoRA model or checkpoint: its PEFT adapter
(``adapter_config.json``, ``adapter_model.safetensors``), the base model's tokenizer files and
chat template (what training rendered and tokenized with: ``training.examples`` loads the base
model's own tokenizer), and a ``README.md`` model card. A full fine-tune: its Hugging Face
folder as training wrote it (weights, config, tokenizer), plus the card.

Nothing is held whole: tar needs each member's size before its bytes, and S3's listing (or the
base model's manifest) gives it, so the archive is written as the objects are read, one chunk
at a time. Whatever can fail for a reason the caller should see (an unknown or foreign model,
the bucket away) is decided before the first byte; an object that changes size while it is
streamed ends the stream, and the client sees a truncated archive rather than a wrong one.
"""

from __future__ import annotations

import re
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import select
from sqlalchemy.orm import Session

from contract.base_models import TOKENIZER_FILES
from contract.bucket import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    DELETED_MARKER,
    adapter_prefix,
)
from service.auth import Caller
from service.base_models.service import BaseModelUnavailable, tokenizer_dir
from service.db import CheckpointRow, FileRow
from service.errors import APIError, UpstreamUnavailable
from service.models.service import owned_model
from service.settings import Settings
from service.storage import BlobStore

CARD = "README.md"
TOKENIZER_NAMES = tuple(n for n in TOKENIZER_FILES if n != "config.json")
"""What an adapter's archive takes from its base model: ``config.json`` is the base's and
would make the folder look like a whole model to ``from_pretrained``."""
COMPRESS_LEVEL = 1
"""Weights barely compress at any level; level 1 keeps a multi-GB full model from being
bound by the API's CPU rather than the network."""
_CHUNK = 1 << 20


class ModelFilesMissing(APIError):
    """The model is listed but its files are not in the bucket: the server's fault."""

    status_code = 500
    type = "server_error"
    code = "model_files_missing"


class ArchiveChanged(RuntimeError):
    """An object's bytes did not match the size announced in its tar header."""


# The archive ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One file of the archive: its name inside the folder, its size, and its bytes."""

    name: str
    size: int
    chunks: Callable[[], Iterable[bytes]]
    mtime: float = 0.0


def tar_gz(folder: str, members: Iterable[Member]) -> Iterator[bytes]:
    """A gzip-compressed tar of ``members`` under ``folder/``, yielded as it is written.

    Each member's bytes are read only when it is its turn, so at most one chunk of one
    object is held at a time. The headers are ``tarfile``'s own; the stream is written here
    because ``TarFile.addfile`` copies a whole member before it returns.
    """
    gz = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    written = 0

    def out(data: bytes) -> Iterator[bytes]:
        nonlocal written
        written += len(data)
        if packed := gz.compress(data):
            yield packed

    stamp = time.time()
    yield from out(_header(folder, 0, stamp, directory=True))
    for m in members:
        yield from out(_header(f"{folder}/{m.name}", m.size, m.mtime or stamp))
        read = 0
        for chunk in m.chunks():
            read += len(chunk)
            if read > m.size:
                break
            yield from out(chunk)
        if read != m.size:
            raise ArchiveChanged(f"{m.name}: {read} bytes read, {m.size} announced")
        yield from out(tarfile.NUL * (-m.size % tarfile.BLOCKSIZE))
    # The end of archive, padded to a whole record, as tarfile's own close() writes it.
    end = 2 * tarfile.BLOCKSIZE
    yield from out(tarfile.NUL * (end + -(written + end) % tarfile.RECORDSIZE))
    yield gz.flush()


def _header(name: str, size: int, mtime: float, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = size, int(mtime)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    return info.tobuf(tarfile.PAX_FORMAT)


def safe_name(model_id: str) -> str:
    """A file and folder name for ``model_id``: letters, digits, ``.``, ``_`` and ``-``.

    >>> safe_name("ft:tiny-llama:org-a:geo:abc123:ckpt-step-3")
    'ft-tiny-llama-org-a-geo-abc123-ckpt-step-3'
    >>> safe_name("ft:org/m:o::k"), safe_name("../..")
    ('ft-org-m-o-k', 'model')
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip(".-") or "model"


# The model card ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataFile:
    id: str
    bytes: int | None
    """None: the file was deleted since."""


@dataclass(frozen=True)
class ModelCard:
    """What ``README.md`` says about a downloaded model (:func:`render_card`)."""

    model: str
    base_model: str
    job_id: str
    method: str
    full_finetune: bool
    hyperparameters: dict[str, Any]
    training_file: DataFile
    validation_file: DataFile | None
    trained_tokens: int | None
    finished_at: int | None
    metrics: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    """``(step, metrics)`` of each of the job's checkpoints, by step."""
    step: int | None = None
    """The checkpoint downloaded; None: the job's final model."""
    base_valid_loss: float | None = None
    files: list[str] = field(default_factory=list)


VALIDATION_KEYS = ("full_valid_loss", "valid_loss")
"""The best checkpoint is the one lowest by the first of these its metrics have."""


def best_checkpoint(metrics: list[tuple[int, dict[str, Any]]]) -> tuple[int, dict] | None:
    """The checkpoint with the lowest validation loss, preferring the whole-file one.

    >>> best_checkpoint([(1, {"valid_loss": 2.0}), (2, {"valid_loss": 1.5}), (3, {})])
    (2, {'valid_loss': 1.5})
    >>> best_checkpoint([(1, {"train_loss": 2.0})]) is None
    True
    """
    for key in VALIDATION_KEYS:
        scored = [(m[key], step, m) for step, m in metrics if isinstance(m.get(key), int | float)]
        if scored:
            _, step, m = min(scored, key=lambda s: (s[0], s[1]))
            return step, m
    return None


def render_card(card: ModelCard) -> str:
    """The model card: what was trained, from what, how, and how well."""
    kind = "a full fine-tune" if card.full_finetune else "a LoRA adapter (PEFT)"
    how = "full fine-tune" if card.full_finetune else "LoRA"
    which = (f"the checkpoint at step {card.step}" if card.step is not None
             else "the final model")
    lines = [f"# {card.model}", "",
             f"{kind.capitalize()} of **{card.base_model}**, trained by openft: {which} of "
             f"fine-tuning job `{card.job_id}`.", "",
             "## Training", "", "| | |", "|---|---|",
             f"| Base model | `{card.base_model}` |",
             f"| Method | {card.method} ({how}) |",
             f"| Job | `{card.job_id}` |",
             f"| Training file | {_file(card.training_file)} |"]
    if card.validation_file is not None:
        lines.append(f"| Validation file | {_file(card.validation_file)} |")
    if card.trained_tokens is not None:
        lines.append(f"| Trained tokens | {card.trained_tokens:,} |")
    if card.finished_at:
        when = datetime.fromtimestamp(card.finished_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines.append(f"| Finished | {when} |")
    lines += ["", "## Hyperparameters", "", "| name | value |", "|---|---|",
              *(f"| {k} | {_value(v)} |" for k, v in sorted(card.hyperparameters.items()))]
    lines += ["", "## Metrics", "", *_metrics_table(card)]
    lines += ["", "## Files", "", *(f"- `{name}`" for name in card.files),
              "", "## Use it", "", *_usage(card)]
    return "\n".join(lines) + "\n"


def _metrics_table(card: ModelCard) -> list[str]:
    if not card.metrics:
        return ["No metrics were recorded."]
    by_step = dict(card.metrics)
    final_step = card.metrics[-1][0]
    rows: list[tuple[str, int, dict[str, Any]]] = []
    if card.step is not None and card.step != final_step and card.step in by_step:
        rows.append(("this checkpoint", card.step, by_step[card.step]))
    rows.append(("final", final_step, by_step[final_step]))
    best = best_checkpoint(card.metrics)
    if best is not None:
        rows.append(("best (lowest validation loss)", *best))
    keys = sorted({k for _, _, m in rows for k, v in m.items()
                   if k != "step" and isinstance(v, int | float)})
    table = [f"| | step | {' | '.join(keys)} |", f"|---|---|{'---|' * len(keys)}",
             *(f"| {label} | {step} | {' | '.join(_value(m.get(k)) for k in keys)} |"
               for label, step, m in rows)]
    if card.base_valid_loss is not None:
        table += ["", f"The base model's validation loss before training: "
                      f"{_value(card.base_valid_loss)}."]
    return table


def _usage(card: ModelCard) -> list[str]:
    folder = safe_name(card.model)
    if card.full_finetune:
        load = [f'model = AutoModelForCausalLM.from_pretrained("{folder}")']
    else:
        load = [f'base = AutoModelForCausalLM.from_pretrained("<folder of {card.base_model}>")',
                f'model = PeftModel.from_pretrained(base, "{folder}")']
    return ["```python",
            *(["from peft import PeftModel"] if not card.full_finetune else []),
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'tokenizer = AutoTokenizer.from_pretrained("{folder}")', *load,
            'prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],',
            "                                       add_generation_prompt=True,",
            '                                       return_tensors="pt", return_dict=True)',
            "out = model.generate(**prompt, max_new_tokens=64, do_sample=False)",
            "```"]


def _file(f: DataFile) -> str:
    return f"`{f.id}` ({'deleted' if f.bytes is None else f'{f.bytes:,} bytes'})"


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


# What a download holds --------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A downloadable model the caller owns, as the database knows it."""

    model_key: str
    card: ModelCard


@dataclass(frozen=True)
class Archive:
    folder: str
    members: list[Member]

    @property
    def filename(self) -> str:
        return f"{self.folder}.tar.gz"

    def chunks(self) -> Iterator[bytes]:
        return tar_gz(self.folder, self.members)


def find(session: Session, caller: Caller, model_id: str) -> Target:
    """The fine-tuned model or checkpoint ``model_id`` of the caller's organization; a base
    model, another organization's or a deleted model is not found, as an unknown one."""
    job, model_key = owned_model(session, caller, model_id)
    checkpoints = list(session.scalars(select(CheckpointRow).where(
        CheckpointRow.job_id == job.id).order_by(CheckpointRow.step_number)))
    step = next((c.step_number for c in checkpoints
                 if c.fine_tuned_model_checkpoint == model_id), None)
    validation = _data_file(session, job.validation_file) if job.validation_file else None
    return Target(model_key, ModelCard(
        model=model_id, base_model=job.base, job_id=job.id, method=job.method_type,
        full_finetune=bool(job.method_hyperparameters.get("full_finetune")),
        hyperparameters=job.method_hyperparameters,
        training_file=_data_file(session, job.training_file), validation_file=validation,
        trained_tokens=job.trained_tokens, finished_at=job.finished_at,
        metrics=[(c.step_number, dict(c.metrics or {})) for c in checkpoints],
        step=step, base_valid_loss=job.base_valid_loss))


def _data_file(session: Session, file_id: str) -> DataFile:
    row = session.get(FileRow, file_id)
    return DataFile(file_id, row.bytes if row is not None else None)


def prepare(settings: Settings, blobs: BlobStore, target: Target) -> Archive:
    """List every file the archive will hold (sizes included); the bucket away is a 503."""
    try:
        members = _model_members(blobs, target)
        if not target.card.full_finetune:
            members += _tokenizer_members(settings, blobs, target.card.base_model)
    except (BotoCoreError, ClientError) as e:
        raise UpstreamUnavailable(f"Model storage is unavailable while reading "
                                  f"{target.card.model}; retry later.") from e
    card = replace(target.card, files=sorted([CARD, *(m.name for m in members)]))
    text = render_card(card).encode()
    readme = Member(CARD, len(text), lambda: [text], card.finished_at or 0)
    return Archive(safe_name(card.model), [*members, readme])


def _model_members(blobs: BlobStore, target: Target) -> list[Member]:
    prefix = adapter_prefix(target.model_key)
    # Only plain relative names: an odd key must not land outside the folder when unpacked.
    objects = {name: o for o in blobs.list_objects(prefix)
               if _plain(name := o.key.removeprefix(prefix)) and name != DELETED_MARKER}
    needed = ("config.json",) if target.card.full_finetune else (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
    if not all(n in objects for n in needed):
        raise ModelFilesMissing(f"The files of {target.card.model} are missing from storage.",
                                param="model")
    names = sorted(objects) if target.card.full_finetune else list(needed)
    return [Member(n, objects[n].size, _object(blobs, objects[n].key), objects[n].modified)
            for n in names]


def _plain(name: str) -> bool:
    """
    >>> _plain("model-00001-of-00002.safetensors"), _plain("../x"), _plain("/etc/x")
    (True, False, False)
    """
    parts = name.split("/")
    return bool(name) and all(p not in ("", ".", "..") for p in parts)


def _tokenizer_members(settings: Settings, blobs: BlobStore, base: str) -> list[Member]:
    """The base model's tokenizer and chat template, from the folder the API counts tokens
    with (its shared volume, or its files fetched from the bucket); none when the base model
    is no longer configured or registered (the card lists what the archive has)."""
    try:
        folder = tokenizer_dir(settings, blobs, base)
    except BaseModelUnavailable:
        return []
    return [Member(n, (folder / n).stat().st_size, _local(folder / n))
            for n in TOKENIZER_NAMES if (folder / n).is_file()]


def _object(blobs: BlobStore, key: str) -> Callable[[], Iterable[bytes]]:
    return lambda: blobs.iter_chunks(key, _CHUNK)


def _local(path: Path) -> Callable[[], Iterable[bytes]]:
    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk
    return chunks
