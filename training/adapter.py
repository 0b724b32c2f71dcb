"""The trained weights a run hands back.

A LoRA run saves a servable PEFT adapter, exactly ``adapter_config.json`` +
``adapter_model.safetensors``, at the end to ``models/{model_key}/`` and with every checkpoint
to ``models/{model_key}-step-{step:08d}/``; serving loads either by name.

A full fine-tune saves one consolidated Hugging Face model folder (weights gathered from
every ZeRO shard, config, the base model's tokenizer) to ``models/{model_key}/`` at the end
only: a whole model per checkpoint would multiply storage by the number of checkpoints, and
the checkpoints' DeepSpeed state already holds the weights to resume from.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import deepspeed

from contract.bucket import ADAPTER_CONFIG, ADAPTER_FILES
from contract.spec import TrainingSpec
from training import storage
from training.model_load import base_model_dir


def save_adapter(engine: Any, spec: TrainingSpec, out: Path, rank: int) -> None:
    """Rank 0 writes the adapter (or, for a full fine-tune, the whole model) into ``out``.

    Every rank must call this. Under ZeRO-3 each rank holds a shard of every trained weight;
    all ranks must enter the gather, or rank 0 saves empty tensors.
    """
    full = spec.hyperparameters.full_finetune
    model = engine.module
    gather: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if spec.hyperparameters.zero_stage == 3:
        params = [p for p in model.parameters() if p.requires_grad or full]
        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gather:
        if rank == 0:
            model.save_pretrained(out, safe_serialization=True)
    if rank != 0:
        return
    if full:
        copy_tokenizer(base_model_dir(spec), out)
    else:
        name_base_model(out / ADAPTER_CONFIG, spec.base_model_id)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")


def copy_tokenizer(base: Path, out: Path) -> None:
    """A full model folder must load on its own: the base model's tokenizer and template."""
    for name in TOKENIZER_FILES:
        if (base / name).exists() and not (out / name).exists():
            shutil.copyfile(base / name, out / name)


def model_files(out: Path) -> list[Path]:
    """What to upload from a saved folder, in upload order: weights and tokenizer first,
    the config last (a reader that sees the config can rely on the rest)."""
    if (out / ADAPTER_CONFIG).exists():
        return [out / name for name in ADAPTER_FILES]
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != "config.json")
    return [*files, out / "config.json"]


def name_base_model(config_path: Path, base_model_id: str) -> None:
    """Record the public base model id rather than this node's local path.

    Done after saving: PEFT looks the name up while saving, and an id is no folder.
    """
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model_id
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def upload_adapter(spec: TrainingSpec, out: Path, prefix: str) -> list[str]:
    """Put the adapter (or full model) saved in ``out`` under ``prefix`` (``models/<name>/``)."""
    return storage.upload_files(storage.client(spec.s3), spec.s3.bucket, prefix, model_files(out))
