"""Base models: where each one's Hugging Face folder lives, and what every node must hold.

A base model is either

* **registered in the bucket** (the default): ``python -m service.base_models register``
  uploads its folder under ``base/{id}/`` and writes :class:`BaseModelManifest` last, at
  :func:`contract.bucket.base_model_manifest_key`. Training workers and serving replicas
  fetch it once per node into that node's cache (:mod:`contract.model_cache`), checked
  against the manifest's sizes and hashes; the API fetches only the tokenizer and config; or
* **on a shared volume** (``volume_path``): a folder every node mounts at the same path (a
  read-only PVC, NFS). Nothing is fetched; every role reads it where it is.

No role reads another role's filesystem: a path on the API's machine means nothing on a Ray
node unless it is such a volume.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

MODEL_CACHE_ENV = "OPENFT_MODEL_CACHE_DIR"
"""Set on each Ray node (the pod spec, or ``ray start``'s environment): the node-local folder
base models are fetched into. Never set in a job's runtime_env: it is the node's, not the
job's."""

TOKENIZER_FILES = ("config.json", "generation_config.json", "tokenizer.json",
                   "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
"""What the API needs of a base model (token counts, the chat template, the context length);
a full fine-tune also copies these into its folder so that it loads on its own."""


def node_cache_dir() -> Path:
    """This node's base model cache: ``$OPENFT_MODEL_CACHE_DIR``, else a folder in the temp
    dir (shared by every process of the node, so one download serves them all)."""
    configured = os.environ.get(MODEL_CACHE_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "openft-models"


class BaseModelConfig(BaseModel):
    """What an operator says about one base model (``OPENFT_BASE_MODELS``, the chart's values):
    where it lives and how serving runs it. Read by the API, the launcher and serving."""

    model_config = ConfigDict(extra="forbid")

    volume_path: str | None = None
    """A folder every node mounts at this path; unset: the model is registered in the bucket
    under ``base/{id}/`` and fetched into each node's cache."""

    tool_call_parser: str | None = None
    """vLLM's parser for this model's tool-call format (``hermes`` for Qwen2.5,
    ``llama3_json``, ``mistral``, ...): enables ``tool_choice: "auto"``."""

    tensor_parallel_size: int = Field(default=1, ge=1)
    """GPUs one serving replica of this model spans (one placement bundle per GPU, on one
    node). Ignored on a cluster without GPUs."""

    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    """Share of each GPU's memory vLLM may take for weights, activations and KV cache (vLLM
    sizes the cache from what is left). Ignored on CPU, where ``kv_cache_gib`` applies."""

    max_model_len: int | None = Field(default=None, ge=32)
    """Longest prompt plus completion served for this model; unset: serving's
    ``max_model_len``."""


class ManifestFile(BaseModel):
    """One file of a registered base model's folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    """Path relative to the folder, ``/``-separated."""
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class BaseModelManifest(BaseModel):
    """What a registered base model's folder holds; written after every file, so its presence
    says the upload is complete. A fetch is verified against it file by file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    files: list[ManifestFile] = Field(min_length=1)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def subset(self, names: tuple[str, ...] | None) -> list[ManifestFile]:
        """The files named (those the folder has), or every file for ``None``."""
        if names is None:
            return list(self.files)
        return [f for f in self.files if f.name in names]
