"""The servable PEFT adapter: exactly ``adapter_config.json`` + ``adapter_model.safetensors``.

Saved at the end of a run to ``models/{model_key}/`` and with every checkpoint to
``models/{model_key}-step-{step:08d}/``; serving loads either by name.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from training.spec import TrainingSpec

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
"""Uploaded in this order: a reader that sees the config can rely on the weights."""


def save_adapter(engine: Any, spec: TrainingSpec, out: Path, rank: int) -> None:
    """Rank 0 writes adapter_config.json + adapter_model.safetensors into ``out``.

    Every rank must call this. Under ZeRO-3 each rank holds a shard of every LoRA weight; all
    ranks must enter the gather, or rank 0 saves empty tensors.
    """
    import deepspeed

    model = engine.module
    gather: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if spec.zero_stage == 3:
        lora_params = [p for p in model.parameters() if p.requires_grad]
        gather = deepspeed.zero.GatheredParameters(lora_params, modifier_rank=None)
    with gather:
        if rank == 0:
            model.save_pretrained(out, safe_serialization=True)
    if rank == 0:
        name_base_model(out / "adapter_config.json", spec.base_model_id)


def name_base_model(config_path: Path, base_model_id: str) -> None:
    """Record the public base model id rather than this node's local path.

    Done after saving: PEFT looks the name up while saving, and an id is no folder.
    """
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model_id
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def upload_adapter(spec: TrainingSpec, out: Path, prefix: str) -> list[str]:
    """Put the adapter files saved in ``out`` under ``prefix`` (``models/<name>/``)."""
    from training import storage

    paths = [out / name for name in ADAPTER_FILES]
    return storage.upload_files(storage.client(spec.s3), spec.s3.bucket, prefix, paths)
