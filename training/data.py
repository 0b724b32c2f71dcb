"""Training data of a run: read the chat JSONL from S3, plan the steps, shard by rank.

Every rank reads and tokenizes the whole file (small next to a training step;
:mod:`training.examples`) and then takes its own slice of a seeded per-epoch permutation, so
no rank waits on another for data. Pure: the driver checks the file with this module before
any worker starts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from contract.chat_format import read_examples
from contract.spec import TrainingSpec
from training.storage import read_bytes


def read_training_file(spec: TrainingSpec, s3: Any) -> list[dict[str, Any]]:
    """Every example of the training file, checked by the validator the API runs.

    Raises :class:`~contract.chat_format.InvalidChatFile` naming the first bad line.
    """
    return read_jsonl(spec, s3, spec.training_file_key)


def read_jsonl(spec: TrainingSpec, s3: Any, key: str) -> list[dict[str, Any]]:
    """The examples of one file of the run, lines of the spec's method (chat or DPO)."""
    body = read_bytes(s3, spec.s3.bucket, key)
    return read_examples(body.splitlines(), spec.method)


@dataclass(frozen=True)
class StepPlan:
    """How examples map to optimizer steps for a given world size.

    Each rank sees ``micro_steps_per_epoch`` examples per epoch (micro batch 1); that count is
    a multiple of ``grad_accum`` so every optimizer step is full, and equal on all ranks so
    collectives never wait on a rank that ran out of data. The shortfall is filled by
    repeating examples of the same epoch, as ``DistributedSampler`` pads.
    """

    grad_accum: int
    micro_steps_per_epoch: int
    n_epochs: int

    @property
    def steps_per_epoch(self) -> int:
        return self.micro_steps_per_epoch // self.grad_accum

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.n_epochs


def plan_steps(num_examples: int, world_size: int, batch_size: int, n_epochs: int) -> StepPlan:
    """Gradient accumulation and per-rank step counts for ``batch_size`` examples per step.

    >>> plan_steps(num_examples=12, world_size=2, batch_size=4, n_epochs=5)
    StepPlan(grad_accum=2, micro_steps_per_epoch=6, n_epochs=5)
    """
    grad_accum = max(1, batch_size // world_size)
    per_rank = math.ceil(num_examples / world_size)
    return StepPlan(grad_accum, math.ceil(per_rank / grad_accum) * grad_accum, n_epochs)


def epoch_indices(
    num_examples: int, plan: StepPlan, seed: int, epoch: int, rank: int, world_size: int
) -> list[int]:
    """Example indices this rank trains on in ``epoch``: a slice of a seeded permutation.

    >>> plan = StepPlan(grad_accum=1, micro_steps_per_epoch=3, n_epochs=1)
    >>> [epoch_indices(5, plan, seed=0, epoch=0, rank=r, world_size=2) for r in (0, 1)]
    [[2, 0, 3], [1, 4, 2]]
    """
    order = list(range(num_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    needed = plan.micro_steps_per_epoch * world_size
    padded = (order * math.ceil(needed / num_examples))[:needed]
    return padded[rank::world_size]


def resume_point(step: int, plan: StepPlan) -> tuple[int, int]:
    """Where a run that already took ``step`` optimizer steps goes on: ``(epoch, micro)``, the
    epoch and the position in this rank's :func:`epoch_indices` of the next example.

    Checkpoints fall between optimizer steps, so ``micro`` is a multiple of ``grad_accum``.

    >>> plan = StepPlan(grad_accum=2, micro_steps_per_epoch=6, n_epochs=5)
    >>> [resume_point(step, plan) for step in (0, 2, 3, 14, 15)]
    [(0, 0), (0, 4), (1, 0), (4, 4), (5, 0)]
    """
    if not 0 <= step <= plan.total_steps:
        raise ValueError(f"step {step} is outside this run's 0..{plan.total_steps} steps")
    epoch, steps_into_epoch = divmod(step, plan.steps_per_epoch)
    return epoch, steps_into_epoch * plan.grad_accum
