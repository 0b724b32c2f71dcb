"""Turning ``"auto"`` hyperparameters into numbers once the training file is known.

The rule (also in README.md), with ``n`` the number of training examples:
- ``n_epochs``: ``clamp(ceil(100 / n), 3, 10)``: small files get more passes, so every job
  sees at least about 100 examples, but never fewer than 3 or more than 10 epochs.
- ``batch_size``: ``clamp(n // 64, 1, 8)``; with ``num_workers`` given, the multiple of it
  at or below that (at least ``num_workers``: every worker takes the same number of
  examples per step). A given batch is never changed: one that is not a multiple of a given
  ``num_workers`` is refused.
- ``num_workers``: the largest divisor of the batch size up to ``training_num_workers`` and
  up to the workers the cluster holds (``service.jobs.capacity``): a worker never idles
  and a batch is never rounded up (batch 8 on 32 GPUs is 8 workers, not 32 examples).
- ``learning_rate_multiplier``: 1.0, times the base rate: :data:`LORA_LEARNING_RATE` for
  LoRA, :data:`FULL_LEARNING_RATE` for full fine-tuning, :data:`DPO_LEARNING_RATE` for DPO
  (preference tuning moves a model that already answers well; it wants small steps).
- ``lora_r``: 16 (8 below 50 examples: little data cannot use the capacity), capped at the
  largest rank serving accepts; ``lora_alpha``: ``2 * lora_r``; ``lora_dropout``: 0.05
  from 1,000 examples on, else 0 (small runs are too short to overfit through it);
  ``lora_target_modules``: every linear layer but the LM head.
- ``max_seq_length``: the longest example's tokens rounded up to a multiple of
  :data:`SEQ_LENGTH_STEP`, capped by the model's context: its ``max_position_embeddings``
  and the length serving serves it at (a longer example could not be served). Longer
  examples are truncated; asking for more than the cap is refused.
- ``zero_stage``, ``gradient_checkpointing``: ``training_zero_stage`` if set, else from the
  model's size and the memory of a worker (:func:`service.jobs.capacity.memory_plan`):
  ZeRO-2 while the replicated weights fit, else ZeRO-3; checkpointing when one
  micro-batch's activations would not fit beside the rest.
- ``beta`` (DPO): 0.1.
- everything else (``lr_scheduler`` linear, ``warmup_ratio`` 0.1, ``packing`` on, ...): the
  fixed defaults of :class:`contract.hyperparameters.Hyperparameters`.

Explicit values are always kept; :func:`check_limits` refuses at creation those no run of
this deployment could honour, naming the knob.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from contract.hyperparameters import DEFAULTS, DPO_BETA, Hyperparameters
from service.jobs.capacity import (
    ClusterView,
    MemoryPlan,
    ModelFacts,
    TrainingLoad,
    describe,
    memory_plan,
)
from service.settings import Settings

LORA_LEARNING_RATE = 5e-4
FULL_LEARNING_RATE = 2e-5
DPO_LEARNING_RATE = 5e-5
SEQ_LENGTH_STEP = 64
"""``max_seq_length`` left auto is a multiple of this: kernels like round shapes."""
MAX_AUTO_BATCH = 8
MIN_SEQ_LENGTH = 16
MEMORY_KNOBS = ("full_finetune", "zero_stage", "gradient_checkpointing", "max_seq_length",
                "num_workers")
"""The knobs that change a worker's memory, in the order a refusal names them."""


@dataclass(frozen=True)
class Limits:
    """What the deployment allows for one base model; requests beyond it are refused at
    creation."""

    num_workers: int
    """The most workers a job leaving ``num_workers`` auto gets."""
    max_workers: int
    zero_stage: int | None
    """The operator's stage for jobs leaving it auto; None: by the memory rule."""
    max_seq_length: int
    """The model's context: what serving serves it at, capped by ``max_position_embeddings``."""
    max_lora_rank: int

    @classmethod
    def of(cls, settings: Settings, base: str | None = None,
           model: ModelFacts | None = None) -> Limits:
        config = settings.base_model_configs().get(base) if base else None
        served = (config.max_model_len if config else None) or settings.serving.max_model_len
        context = min(served, model.context) if model and model.context else served
        return cls(num_workers=settings.training_num_workers,
                   max_workers=max(settings.training_max_workers, settings.training_num_workers),
                   zero_stage=settings.training_zero_stage,
                   max_seq_length=context,
                   max_lora_rank=settings.serving.max_lora_rank)


class OutOfLimits(ValueError):
    """A requested value the deployment cannot run; ``param`` names it (a hyperparameter,
    or ``model`` when the base model itself cannot be trained here)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def check_limits(requested: dict[str, Any], limits: Limits, model: ModelFacts | None = None,
                 cluster: ClusterView | None = None) -> None:
    """Refuse at creation what no run of this deployment could honour. ``cluster`` None
    (Ray unreachable) refuses nothing for capacity; ``model`` None nothing for memory."""
    given = _given(requested)
    r, workers, length, batch = (given.get(k) for k in ("lora_r", "num_workers",
                                                         "max_seq_length", "batch_size"))
    if r is not None and not given.get("full_finetune") and r > limits.max_lora_rank:
        raise OutOfLimits("lora_r", f"lora_r {r} is above the largest rank serving accepts "
                          f"({limits.max_lora_rank}).")
    if workers is not None and workers > limits.max_workers:
        raise OutOfLimits("num_workers", f"num_workers {workers} is above this deployment's "
                          f"limit ({limits.max_workers}).")
    if length is not None and length > limits.max_seq_length:
        raise OutOfLimits("max_seq_length", f"max_seq_length {length} is above this model's "
                          f"context length ({limits.max_seq_length}).")
    if batch is not None and workers is not None and batch % workers:
        raise OutOfLimits("batch_size", f"batch_size {batch} is not a multiple of num_workers "
                          f"{workers}: every worker takes the same number of examples a step.")
    if cluster is not None and cluster.has_workers:
        _check_capacity(given, limits, model, cluster)


def _check_capacity(given: dict[str, Any], limits: Limits, model: ModelFacts | None,
                    cluster: ClusterView) -> None:
    slots, workers = cluster.worker_slots, given.get("num_workers")
    if slots < 1 or (workers is not None and workers > slots):
        raise OutOfLimits("num_workers", f"{'num_workers ' + str(workers) if workers else 'A job'}"
                          f" needs more than this cluster can hold: room for {slots} "
                          f"worker(s) of {cluster.describe_worker()} beside serving.")
    memory = cluster.memory_per_worker
    if model is None or memory is None or not cluster.memory_measured:
        return
    best = _smallest_plan(given, limits, model, cluster, memory)
    if best.fits:
        return
    knobs = [k for k in MEMORY_KNOBS if k in given]
    if _smallest_plan({k: v for k, v in given.items() if k not in knobs}, limits, model,
                      cluster, memory).fits:
        culprit = next((k for k in knobs if _smallest_plan(
            {j: v for j, v in given.items() if j != k}, limits, model, cluster, memory).fits),
            knobs[0])
        param, why = culprit, f"; {culprit} {given[culprit]} is what makes it too big."
    else:
        param, why = "model", "; the model is too big for this cluster."
    raise OutOfLimits(param, (
        f"This job needs about {describe(best.need)} per worker at the least (ZeRO-"
        f"{best.zero_stage}, gradient checkpointing "
        f"{'on' if best.gradient_checkpointing else 'off'}), more than the "
        f"{describe(best.have)} a worker of this cluster may use{why}"))


def _smallest_plan(given: dict[str, Any], limits: Limits, model: ModelFacts,
                   cluster: ClusterView, memory: float) -> MemoryPlan:
    """The plan with the least memory per worker that the given knobs allow."""
    workers = given.get("num_workers") or min(cluster.worker_slots, limits.max_workers)
    per_worker = max(1, int(given.get("batch_size") or 1) // max(1, workers))
    load = TrainingLoad(workers, given.get("max_seq_length") or MIN_SEQ_LENGTH,
                        bool(given.get("full_finetune")), given.get("lora_r") or 1,
                        cluster.weight_bytes, sequences_per_worker_step=per_worker)
    return memory_plan(model, load, memory, given.get("zero_stage", 3),
                       given.get("gradient_checkpointing", True))


def resolve(requested: dict[str, Any], n_examples: int, limits: Limits,
            method: str = "supervised", *, longest_example: int | None = None,
            model: ModelFacts | None = None,
            cluster: ClusterView | None = None) -> Hyperparameters:
    """The run's hyperparameters: those given, the rule above for those left ``auto``.

    ``longest_example`` is the token count of the longest conversation trained on; ``model``
    and ``cluster`` feed the memory rule (without them, ZeRO-2 and no checkpointing).
    """
    given = _given(requested)
    if method != "dpo":
        given.pop("beta", None)

    def pick(name: str, default: Any) -> Any:
        return given.get(name, default)

    batch, workers = _batch_and_workers(given, n_examples, limits, cluster)
    lora_r = int(pick("lora_r", min(limits.max_lora_rank, 8 if n_examples < 50 else 16)))
    full = bool(pick("full_finetune", DEFAULTS["full_finetune"]))
    multiplier = float(pick("learning_rate_multiplier", DEFAULTS["learning_rate_multiplier"]))
    base_lr = (DPO_LEARNING_RATE if method == "dpo"
               else FULL_LEARNING_RATE if full else LORA_LEARNING_RATE)
    length = int(pick("max_seq_length", auto_max_seq_length(longest_example, limits)))
    stage, checkpointing = pick("zero_stage", limits.zero_stage), pick(
        "gradient_checkpointing", None)
    if model is not None and cluster is not None and cluster.memory_per_worker is not None:
        sequences = batch // workers * (2 if method == "dpo" else 1)
        plan = memory_plan(model, TrainingLoad(workers, length, full, lora_r,
                                               cluster.weight_bytes, sequences),
                           cluster.memory_per_worker, stage, checkpointing)
        stage, checkpointing = plan.zero_stage, plan.gradient_checkpointing
    auto = {
        "n_epochs": min(10, max(3, math.ceil(100 / max(n_examples, 1)))),
        "lora_r": lora_r,
        "lora_alpha": 2 * lora_r,
        "lora_dropout": 0.05 if n_examples >= 1000 else DEFAULTS["lora_dropout"],
        "max_seq_length": length,
        "zero_stage": stage or DEFAULTS["zero_stage"],
        "gradient_checkpointing": bool(checkpointing),
        **({"beta": DPO_BETA} if method == "dpo" else {}),
    }
    return Hyperparameters.model_validate({
        **auto, **given, "batch_size": batch, "num_workers": workers,
        "learning_rate": base_lr * multiplier,
    })


def auto_max_seq_length(longest_example: int | None, limits: Limits) -> int:
    """The longest example rounded up to :data:`SEQ_LENGTH_STEP`, within the model's context.

    >>> limits = Limits(2, 8, None, max_seq_length=1024, max_lora_rank=16)
    >>> [auto_max_seq_length(n, limits) for n in (None, 1, 64, 65, 900, 5000)]
    [1024, 64, 64, 128, 960, 1024]
    """
    if longest_example is None:
        return limits.max_seq_length
    rounded = max(1, math.ceil(longest_example / SEQ_LENGTH_STEP)) * SEQ_LENGTH_STEP
    return max(MIN_SEQ_LENGTH, min(rounded, limits.max_seq_length))


def _batch_and_workers(given: dict[str, Any], n_examples: int, limits: Limits,
                       cluster: ClusterView | None) -> tuple[int, int]:
    """``(batch_size, num_workers)``: a batch is a multiple of the workers, never rounded up.

    >>> limits = Limits(num_workers=4, max_workers=8, zero_stage=None, max_seq_length=1024,
    ...                 max_lora_rank=16)
    >>> [_batch_and_workers(g, 1000, limits, None) for g in
    ...  ({}, {"batch_size": 6}, {"batch_size": 7}, {"num_workers": 3}, {"num_workers": 5})]
    [(8, 4), (6, 3), (7, 1), (6, 3), (5, 5)]
    """
    auto_batch = min(MAX_AUTO_BATCH, max(1, n_examples // 64))
    if "num_workers" in given:
        workers = int(given["num_workers"])
        return int(given.get("batch_size", max(workers, auto_batch // workers * workers))), \
            workers
    batch = int(given.get("batch_size", auto_batch))
    room = min(limits.num_workers, limits.max_workers)
    if cluster is not None:
        room = min(room, max(1, cluster.worker_slots))
    return batch, max(d for d in range(1, min(batch, room) + 1) if batch % d == 0)


def _given(requested: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in requested.items() if v not in ("auto", None)}
