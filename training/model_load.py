"""The base model on this node: where its folder is, and loading it for training.

A base model on a shared volume (``spec.base_model_path``) is read where it is; one registered
in the bucket is fetched once per node into the node's cache (:mod:`contract.model_cache`:
every rank asks, the per-model lock makes the first one download and the others wait).

Under ZeRO-3 the model is built partitioned: each parameter is split over the ranks as it is
created, so a base larger than one worker's memory (a 70B model on 80 GB GPUs) never exists
whole in any process. Under ZeRO-2 (or none) every rank builds the whole model.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import deepspeed
import torch
from transformers import AutoModelForCausalLM
from transformers.integrations import HfDeepSpeedConfig

from contract.model_cache import ensure_local
from contract.spec import TrainingSpec
from training import storage
from training.deepspeed_private import partition_numel, skip_shm_comm_op

READY_LOG = "openft-model-ready"
"""Prefix of the one line each rank logs once its model is built (then JSON: rank, dtype,
attention, ZeRO stage, parameters and how many this rank holds): an operator reading the
job's logs, and ``bench/gpu_smoke.py``, see how the model was laid out."""


def base_model_dir(spec: TrainingSpec) -> Path:
    """The base model's Hugging Face folder on this node, fetched into its cache if need be."""
    if spec.base_model_path is not None:
        return Path(spec.base_model_path)
    return ensure_local(storage.client(spec.s3), spec.s3.bucket, spec.base_model_id)


def load_base_model(spec: TrainingSpec, ds_config: dict[str, Any], dtype: torch.dtype) -> Any:
    """The base model's weights as a transformers model, ready for PEFT or a full fine-tune.

    ``ds_config`` is the DeepSpeed config the engine will be built with: with ZeRO stage 3,
    transformers builds the model inside ``deepspeed.zero.Init`` (through
    :class:`HfDeepSpeedConfig`), whose dtype follows the config's ``bf16`` flag, so ``dtype``
    must agree with it. Every rank must call this together (partitioning is collective).
    """
    attention = attention_implementation(spec.use_gpu, dtype)
    model = _load(base_model_dir(spec), ds_config, dtype, attention)
    print(f"{READY_LOG} {json.dumps(layout(model, ds_config, attention))}", flush=True)
    return model


def _load(folder: Path, ds_config: dict[str, Any], dtype: torch.dtype, attention: str) -> Any:
    kwargs = {"dtype": dtype, "attn_implementation": attention}
    if not is_zero3(ds_config):
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    # zero.Init reads the world size from DeepSpeed's comm layer, which deepspeed.initialize
    # would only start later (on Ray Train's process group); without it every rank sees a
    # world of 1 and refuses the batch sizes. Skip the shm op it would build (see
    # training.loop.initialize_deepspeed for why).
    skip_shm_comm_op()
    deepspeed.init_distributed()
    # transformers keeps only a weak reference: the object must live while from_pretrained
    # runs. It is dropped afterwards, so nothing later (PEFT, saving) thinks it is in a
    # zero.Init context: the engine partitions what PEFT adds itself.
    partitioned = HfDeepSpeedConfig(ds_config)
    try:
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    finally:
        del partitioned


def layout(model: Any, ds_config: dict[str, Any], attention: str) -> dict[str, Any]:
    """How the built model sits on this rank: what :data:`READY_LOG` reports."""
    total = local = 0
    for param in model.parameters():
        held, whole = partition_numel(param) if hasattr(param, "ds_numel") else \
            (param.numel(), param.numel())
        local, total = local + held, total + whole
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return {"rank": rank, "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "attn_implementation": attention,
            "zero_stage": int(ds_config.get("zero_optimization", {}).get("stage", 0)),
            "parameters": total, "local_parameters": local}


def is_zero3(ds_config: dict[str, Any]) -> bool:
    """Whether ``ds_config`` partitions the parameters (ZeRO stage 3).

    >>> is_zero3({"zero_optimization": {"stage": 3}}), is_zero3({})
    (True, False)
    """
    return int(ds_config.get("zero_optimization", {}).get("stage", 0)) == 3


def attention_implementation(on_gpu: bool, dtype: torch.dtype) -> str:
    """flash-attention 2 where it can run (installed, CUDA, half precision), else sdpa.

    Packed rows stay one example per segment with either (:mod:`training.packing` says
    how: restarting ``position_ids`` for sdpa, varlen kwargs for flash-attention). Its
    kernels take only fp16/bf16, hence the dtype check.

    >>> attention_implementation(on_gpu=False, dtype=torch.bfloat16)
    'sdpa'
    >>> attention_implementation(on_gpu=True, dtype=torch.float32)
    'sdpa'
    """
    half = dtype in (torch.bfloat16, torch.float16)
    usable = on_gpu and half and torch.cuda.is_available()
    if usable and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"
