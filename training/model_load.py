"""The base model on this node: where its folder is, and loading it for training.

A base model on a shared volume (``spec.base_model_path``) is read where it is; one registered
in the bucket is fetched once per node into the node's cache (:mod:`contract.model_cache`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from contract.spec import TrainingSpec


def base_model_dir(spec: TrainingSpec) -> Path:
    """The base model's Hugging Face folder on this node."""
    if spec.base_model_path is None:
        raise NotImplementedError("fetching a registered base model: not yet")
    return Path(spec.base_model_path)


def load_base_model(spec: TrainingSpec, ds_config: dict[str, Any], dtype: torch.dtype) -> Any:
    """The base model's weights as a transformers model, ready for PEFT or a full fine-tune."""
    del ds_config  # not used yet
    return AutoModelForCausalLM.from_pretrained(base_model_dir(spec), dtype=dtype)
