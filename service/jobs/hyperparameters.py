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
- ``lr_scheduler``: linear; ``warmup_ratio``: 0.1.
- ``max_seq_length``: the serving context length (a longer example could not be served).
- ``packing``: on (the loss is the same as unpacked, only faster).
- ``zero_stage``, ``num_workers``: the service's settings; ``gradient_checkpointing``: off.
- ``beta`` (DPO): 0.1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from service.settings import Settings

LORA_LEARNING_RATE = 5e-4
FULL_LEARNING_RATE = 2e-5
DPO_LEARNING_RATE = 5e-5

OPENAI_KEYS = ("batch_size", "learning_rate_multiplier", "n_epochs")
"""What the deprecated top-level ``hyperparameters`` of a job shows."""


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
                   max_seq_length=settings.serving_max_model_len,
                   max_lora_rank=settings.serving_max_lora_rank)


@dataclass(frozen=True)
class Resolved:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: str | list[str]
    full_finetune: bool
    lr_scheduler: Literal["linear", "cosine"]
    warmup_ratio: float
    max_seq_length: int
    packing: bool
    zero_stage: int
    gradient_checkpointing: bool
    num_workers: int
    beta: float | None = None
    base_learning_rate: float = LORA_LEARNING_RATE

    @property
    def learning_rate(self) -> float:
        return self.base_learning_rate * self.learning_rate_multiplier

    def as_dict(self) -> dict[str, Any]:
        """OpenAI's three, as the job's top-level ``hyperparameters``."""
        return {key: getattr(self, key) for key in OPENAI_KEYS}

    def method_dict(self) -> dict[str, Any]:
        """Everything the run uses, as ``method.<type>.hyperparameters``."""
        values = asdict(self)
        values.pop("base_learning_rate")
        if values["beta"] is None:
            values.pop("beta")
        return values


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
            method: str = "supervised") -> Resolved:
    def given(name: str) -> Any:
        value = requested.get(name, "auto")
        return None if value in ("auto", None) else value

    def pick(name: str, default: Any) -> Any:
        value = given(name)
        return default if value is None else value

    workers = int(pick("num_workers", limits.num_workers))
    n_epochs = pick("n_epochs", min(10, max(3, math.ceil(100 / max(n_examples, 1)))))
    batch = pick("batch_size", min(8, max(1, n_examples // 64)))
    batch = max(workers, math.ceil(batch / workers) * workers)
    full = bool(requested.get("full_finetune", False))
    lora_r = int(pick("lora_r", min(limits.max_lora_rank, 8 if n_examples < 50 else 16)))
    base_lr = (DPO_LEARNING_RATE if method == "dpo"
               else FULL_LEARNING_RATE if full else LORA_LEARNING_RATE)
    return Resolved(
        n_epochs=int(n_epochs), batch_size=int(batch),
        learning_rate_multiplier=float(pick("learning_rate_multiplier", 1.0)),
        lora_r=lora_r, lora_alpha=int(pick("lora_alpha", 2 * lora_r)),
        lora_dropout=float(pick("lora_dropout", 0.05 if n_examples >= 1000 else 0.0)),
        lora_target_modules=pick("lora_target_modules", "all-linear"),
        full_finetune=full,
        lr_scheduler=pick("lr_scheduler", "linear"),
        warmup_ratio=float(pick("warmup_ratio", 0.1)),
        max_seq_length=int(pick("max_seq_length", limits.max_seq_length)),
        packing=bool(pick("packing", True)),
        zero_stage=int(pick("zero_stage", limits.zero_stage)),
        gradient_checkpointing=bool(pick("gradient_checkpointing", False)),
        num_workers=workers,
        beta=float(pick("beta", 0.1)) if method == "dpo" else None,
        base_learning_rate=base_lr,
    )
