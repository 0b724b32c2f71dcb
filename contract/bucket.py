"""The bucket layout: the only module that spells an S3 key.

One bucket holds everything; the database points into it by these keys. Writers and readers
in every role call these functions, so a change of layout is a change here::

    files/{file_id}                                   uploaded bytes
    jobs/{job_id}/spec.json                           the run's TrainingSpec
    jobs/{job_id}/control.json                        {"action": "pause"} from the API
    jobs/{job_id}/events/{seq:08d}.jsonl              progress, written by the run
    jobs/{job_id}/checkpoints/step-{step:08d}/        Ray Train checkpoints (resumable state)
    jobs/{job_id}/results.csv                         step metrics (a result file)
    models/{model_key}/                               adapter (or whole model) of a job or
                                                      checkpoint, served as <base>:{model_key}
    models/{model_key}/deleted.json                   the model was deleted: stop serving it
    base/{base_id}/                                   base model weights, when not on a volume
    base/{base_id}/openft-manifest.json               their sizes and hashes, written last

"key" here always means an S3 key; the database's ``model_key`` column is the name inside
``models/``, turned into a key by :func:`adapter_prefix`.
"""

from __future__ import annotations

ADAPTERS_PREFIX = "models"
"""Top folder of adapters (and whole fine-tuned models): ``models/{model_key}/``."""

DELETED_MARKER = "deleted.json"
"""Object the API writes next to an adapter's files when its model is deleted: serving then
stops serving it; the weights stay until the job is deleted."""

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG)
"""A servable PEFT adapter under ``models/{model_key}/``, in upload order: a reader that sees
the config can rely on the weights."""

RAY_TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"
"""Ray Train's own record of a run's checkpoints, under the checkpoints folder."""


def file_key(file_id: str) -> str:
    """
    >>> file_key("file-abc")
    'files/file-abc'
    """
    return f"files/{file_id}"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def spec_key(job_id: str) -> str:
    """
    >>> spec_key("ftjob-1")
    'jobs/ftjob-1/spec.json'
    """
    return f"{job_prefix(job_id)}spec.json"


def control_key(job_id: str) -> str:
    """The API writes ``{"action": "pause"}`` here; rank 0 checkpoints and stops the run."""
    return f"{job_prefix(job_id)}control.json"


def events_prefix(job_id: str) -> str:
    return f"{job_prefix(job_id)}events/"


def event_batch_key(job_id: str, seq: int) -> str:
    """Event batches are numbered so readers can resume after the last one they ingested.

    >>> event_batch_key("ftjob-1", 3)
    'jobs/ftjob-1/events/00000003.jsonl'
    """
    return f"{events_prefix(job_id)}{seq:08d}.jsonl"


def event_batch_seq(key: str, job_id: str) -> int | None:
    """The batch number a key of :func:`event_batch_key` holds; None for any other key.

    >>> event_batch_seq("jobs/j/events/00000007.jsonl", "j")
    7
    >>> event_batch_seq("jobs/j/events/notes.txt", "j") is None
    True
    """
    prefix, suffix = events_prefix(job_id), ".jsonl"
    if not (key.startswith(prefix) and key.endswith(suffix)):
        return None
    digits = key[len(prefix):-len(suffix)]
    return int(digits) if digits.isdigit() else None


def results_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}results.csv"


def checkpoints_prefix(job_id: str) -> str:
    """Folder of a job's Ray Train checkpoints (no trailing slash: Ray Train's run folder)."""
    return f"{job_prefix(job_id)}checkpoints"


def checkpoint_dir_name(step: int) -> str:
    """The checkpoint's folder under :func:`checkpoints_prefix`, as Ray Train names it."""
    return f"step-{step:08d}"


def checkpoint_key(job_id: str, step: int) -> str:
    """Prefix of the resumable state after optimizer step ``step``.

    >>> checkpoint_key("ftjob-1", 12)
    'jobs/ftjob-1/checkpoints/step-00000012/'
    """
    return f"{checkpoints_prefix(job_id)}/{checkpoint_dir_name(step)}/"


def ray_train_snapshot_key(job_id: str) -> str:
    return f"{checkpoints_prefix(job_id)}/{RAY_TRAIN_SNAPSHOT}"


def adapter_prefix(model_key: str) -> str:
    """
    >>> adapter_prefix("tiny-llama-ftjob-1")
    'models/tiny-llama-ftjob-1/'
    """
    return f"{ADAPTERS_PREFIX}/{model_key}/"


def model_key_of(adapter_key: str) -> str | None:
    """The ``model_key`` of an adapter prefix (inverse of :func:`adapter_prefix`).

    >>> model_key_of("models/tiny-llama-ftjob-1-step-00000012/")
    'tiny-llama-ftjob-1-step-00000012'
    >>> model_key_of("") is None
    True
    """
    return adapter_key.removeprefix(f"{ADAPTERS_PREFIX}/").strip("/") or None


def checkpoint_model_key(model_key: str, step: int) -> str:
    """Name of the servable adapter of a checkpoint: ``models/{this}/``, served as
    ``<base>:{this}``.

    >>> checkpoint_model_key("tiny-llama-ftjob-1", 12)
    'tiny-llama-ftjob-1-step-00000012'
    """
    return f"{model_key}-{checkpoint_dir_name(step)}"


def deleted_marker_key(model_key: str) -> str:
    """
    >>> deleted_marker_key("tiny-llama-ftjob-1")
    'models/tiny-llama-ftjob-1/deleted.json'
    """
    return adapter_prefix(model_key) + DELETED_MARKER


def base_model_prefix(base_id: str) -> str:
    """Where a base model's Hugging Face folder lives when it is registered in the bucket.

    >>> base_model_prefix("SmolLM2-135M-Instruct")
    'base/SmolLM2-135M-Instruct/'
    """
    return f"base/{base_id}/"


BASE_MODEL_MANIFEST = "openft-manifest.json"
"""Written after every file of a registered base model: :class:`contract.base_models.
BaseModelManifest` (sizes and hashes the nodes verify their copies against)."""


def base_model_manifest_key(base_id: str) -> str:
    """
    >>> base_model_manifest_key("SmolLM2-135M-Instruct")
    'base/SmolLM2-135M-Instruct/openft-manifest.json'
    """
    return base_model_prefix(base_id) + BASE_MODEL_MANIFEST


def base_model_file_key(base_id: str, name: str) -> str:
    """
    >>> base_model_file_key("m", "model.safetensors")
    'base/m/model.safetensors'
    """
    return base_model_prefix(base_id) + name
