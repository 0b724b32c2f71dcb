"""The trained weights a run hands back.

A LoRA run saves a servable PEFT adapter, exactly ``adapter_config.json`` +
``adapter_model.safetensors``, at the end to ``models/{model_key}/`` and with every checkpoint
to ``models/{model_key}-step-{step:08d}/``; serving loads either by name.

A full fine-tune saves one Hugging Face model folder (weights gathered from the ZeRO
partitions one module at a time into safetensors shards of bounded size plus the index
transformers reads, config, the base model's tokenizer) to ``models/{model_key}/`` at the
end only: a whole model per checkpoint would multiply storage by the number of checkpoints,
and the checkpoints' DeepSpeed state already holds the weights to resume from.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import deepspeed
import torch
from safetensors.torch import save_file

from contract.base_models import TOKENIZER_FILES
from contract.bucket import ADAPTER_CONFIG, ADAPTER_FILES
from contract.spec import TrainingSpec
from training import storage
from training.model_load import base_model_dir

MAX_SHARD_BYTES = 2 * 1024**3
"""A full model's weights go in safetensors files of at most this size (a tensor larger than
that gets a file of its own): what rank 0 holds in memory at once while exporting."""

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


def save_adapter(engine: Any, spec: TrainingSpec, out: Path, rank: int,
                 max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """Rank 0 writes the adapter (or, for a full fine-tune, the whole model) into ``out``.

    Every rank must call this. Under ZeRO-3 each rank holds a shard of every trained weight;
    all ranks must enter the gather, or rank 0 saves empty tensors.
    """
    partitioned = engine.zero_optimization_stage() == 3
    if spec.hyperparameters.full_finetune:
        export_full_model(engine.module, out, rank, partitioned, max_shard_bytes)
        if rank == 0:
            copy_tokenizer(base_model_dir(spec), out)
        return
    model = engine.module
    trained = [p for p in model.parameters() if p.requires_grad]
    with gathered(trained, partitioned):
        if rank == 0:
            model.save_pretrained(out, safe_serialization=True)
    if rank == 0:
        name_base_model(out / ADAPTER_CONFIG, spec.base_model_id)


def export_full_model(model: Any, out: Path, rank: int, partitioned: bool,
                      max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """The whole model as a Hugging Face folder (weights in shards, ``config.json``), by rank 0.

    Gathered one module at a time (its own parameters, not its children's): no process
    ever holds the whole model, only one module's full weights plus the shard being
    filled. Every rank must call this (each gather is collective). Tensors are saved under
    their ``state_dict`` names; a weight shared by two modules (tied embeddings) is saved
    once, under its first name, as ``save_pretrained`` does.
    """
    shards = ShardWriter(out, max_shard_bytes) if rank == 0 else None
    for names, params, buffers in module_by_module(model):
        with gathered(params, partitioned):
            if shards is not None:
                for name, tensor in [*zip(names, params, strict=True), *buffers]:
                    shards.add(name, tensor)
    if shards is not None:
        shards.close()
        # The live config: it records the dtype the weights were saved in.
        model.config.save_pretrained(out)


def module_by_module(model: torch.nn.Module) -> Iterator[tuple[list[str], list[Any], list[Any]]]:
    """Per module: the names and parameters it owns (each parameter once in the model), and
    its ``(name, tensor)`` buffers that belong in a checkpoint (persistent ones).

    Under ZeRO-3 ``state_dict()`` is cheap: it holds every parameter's empty local data.
    """
    in_checkpoint = set(model.state_dict())
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        names, params = [], []
        for name, param in module.named_parameters(prefix=prefix, recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                names.append(name)
                params.append(param)
        buffers = [(name, buffer)
                   for name, buffer in module.named_buffers(prefix=prefix, recurse=False)
                   if name in in_checkpoint]
        if params or buffers:
            yield names, params, buffers


def gathered(params: Sequence[Any], partitioned: bool) -> contextlib.AbstractContextManager[Any]:
    """ZeRO-3's full parameters on every rank for the block; nothing to do otherwise."""
    if not partitioned or not params:
        return contextlib.nullcontext()
    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


class ShardWriter:
    """Tensors into safetensors files of at most ``max_bytes`` each, named as transformers
    names them (``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json``), once :meth:`close` knows how many there are."""

    def __init__(self, out: Path, max_bytes: int) -> None:
        self._out = out
        self._max_bytes = max_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self._total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Copy ``tensor`` (a gathered parameter is freed when its gather ends)."""
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self._max_bytes:
            self._flush()
        self._pending[name] = tensor.detach().to("cpu", copy=True).contiguous()
        self._pending_bytes += size
        self._total_bytes += size

    def close(self) -> list[Path]:
        """Name the files and write the index (when there are several); returns the files."""
        if self._pending or not self._written:
            self._flush()
        names = shard_names(len(self._written))
        for (path, _), name in zip(self._written, names, strict=True):
            path.rename(self._out / name)
        if len(names) > 1:
            weight_map = {tensor: name for (_, tensors), name in zip(self._written, names,
                                                                   strict=True)
                          for tensor in tensors}
            index = {"metadata": {"total_size": self._total_bytes}, "weight_map": weight_map}
            (self._out / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
        return [self._out / name for name in names]

    def _flush(self) -> None:
        path = self._out / f".shard-{len(self._written):05d}.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._written.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0


def shard_names(n: int) -> list[str]:
    """The weight files of a model saved in ``n`` shards, as transformers names them.

    >>> shard_names(1)
    ['model.safetensors']
    >>> shard_names(2)
    ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']
    """
    if n == 1:
        return [WEIGHTS]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def copy_tokenizer(base: Path, out: Path) -> None:
    """A full model folder must load on its own: the base model's tokenizer, chat template
    and generation config (``config.json`` is the exported model's own)."""
    for name in TOKENIZER_FILES:
        if (base / name).exists() and not (out / name).exists():
            shutil.copyfile(base / name, out / name)


def model_files(out: Path) -> list[Path]:
    """What to upload from a saved folder, in upload order: weights, index and tokenizer
    first, the config last (a reader that sees the config can rely on the rest)."""
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
