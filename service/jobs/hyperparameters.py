"""Turning ``"auto"`` hyperparameters into numbers once the training file is known.

The rule (also in README.md), with ``n`` the number of training examples:
- ``n_epochs``: ``clamp(ceil(100 / n), 3, 10)``: small files get more passes, so every job
  sees at least about 100 examples, but never fewer than 3 or more than 10 epochs.
- ``batch_size``: ``clamp(n // 64, 1, 8)``, rounded up to a multiple of ``num_workers``
  (every worker takes the same number of examples per step).
- ``learning_rate_multiplier``: 1.0, times the base rate: :data:`LORA_LEARNING_RATE` for
  LoRA, :data:`FULL_LEARNING_RATE` for full fine-tuning, :data:`DPO_LEARNING_RATE` for DPO
  (preference tuning moves a model that already answers well; it wants small steps).
- ``lora_r``: 16 (8 below 50 examples: little data cannot use the capacity), capped at the
  largest rank serving accepts; ``lora_alpha``: ``2 * lora_r``; ``lora_dropout``: 0.05
  from 1,000 examples on, else 0 (small runs are too short to overfit through it);
  ``lora_target_modules``: every linear layer but the LM head.
- ``max_seq_length``: the serving context length (a longer example could not be served).
- ``zero_stage``, ``num_workers``: the service's settings.
- ``beta`` (DPO): 0.1.
- everything else (``lr_scheduler`` linear, ``warmup_ratio`` 0.1, ``packing`` on,
  ``gradient_checkpointing`` off, ...): the fixed defaults of
  :class:`contract.hyperparameters.Hyperparameters`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from contract.hyperparameters import DEFAULTS, DPO_BETA, Hyperparameters
from service.settings import Settings

LORA_LEARNING_RATE = 5e-4
FULL_LEARNING_RATE = 2e-5
DPO_LEARNING_RATE = 5e-5


@dataclass(frozen=True)
class Limits:
    """What the deployment allows; requests beyond it are refused at creation."""

    num_workers: int
    max_workers: int
    zero_stage: int
    max_seq_length: int
    max_lora_rank: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(num_workers=settings.training_num_workers,
                   max_workers=max(settings.training_max_workers, settings.training_num_workers),
                   zero_stage=settings.training_zero_stage,
                   max_seq_length=settings.serving.max_model_len,
                   max_lora_rank=settings.serving.max_lora_rank)


class OutOfLimits(ValueError):
    """A requested value the deployment cannot run; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def check_limits(requested: dict[str, Any], limits: Limits) -> None:
    """Refuse at creation what no run of this deployment could honour."""
    r, workers, length = (requested.get(k) for k in ("lora_r", "num_workers", "max_seq_length"))
    if isinstance(r, int) and not requested.get("full_finetune") and r > limits.max_lora_rank:
        raise OutOfLimits("lora_r", f"lora_r {r} is above the largest rank serving accepts "
                          f"({limits.max_lora_rank}).")
    if isinstance(workers, int) and workers > limits.max_workers:
        raise OutOfLimits("num_workers", f"num_workers {workers} is above this deployment's "
                          f"limit ({limits.max_workers}).")
    if isinstance(length, int) and length > limits.max_seq_length:
        raise OutOfLimits("max_seq_length", f"max_seq_length {length} is above the served "
                          f"context length ({limits.max_seq_length}).")


def resolve(requested: dict[str, Any], n_examples: int, limits: Limits,
            method: str = "supervised") -> Hyperparameters:
    """The run's hyperparameters: those given, the rule above for those left ``auto``."""
    given = {k: v for k, v in requested.items() if v not in ("auto", None)}
    if method != "dpo":
        given.pop("beta", None)

    def pick(name: str, default: Any) -> Any:
        return given.get(name, default)

    workers = int(pick("num_workers", limits.num_workers))
    batch = pick("batch_size", min(8, max(1, n_examples // 64)))
    lora_r = int(pick("lora_r", min(limits.max_lora_rank, 8 if n_examples < 50 else 16)))
    full = bool(pick("full_finetune", DEFAULTS["full_finetune"]))
    multiplier = float(pick("learning_rate_multiplier", DEFAULTS["learning_rate_multiplier"]))
    base_lr = (DPO_LEARNING_RATE if method == "dpo"
               else FULL_LEARNING_RATE if full else LORA_LEARNING_RATE)
    auto = {
        "n_epochs": min(10, max(3, math.ceil(100 / max(n_examples, 1)))),
        "lora_r": lora_r,
        "lora_alpha": 2 * lora_r,
        "lora_dropout": 0.05 if n_examples >= 1000 else DEFAULTS["lora_dropout"],
        "max_seq_length": limits.max_seq_length,
        "zero_stage": limits.zero_stage,
        "num_workers": workers,
        **({"beta": DPO_BETA} if method == "dpo" else {}),
    }
    return Hyperparameters.model_validate({
        **auto, **given,
        # every worker takes the same number of examples per step
        "batch_size": max(workers, math.ceil(batch / workers) * workers),
        "learning_rate": base_lr * multiplier,
    })
