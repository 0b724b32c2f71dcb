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
from contract.hyperparameters import TOKENS_PER_FORWARD
from contract.spec import TrainingSpec
from training.storage import read_bytes


def read_jsonl(spec: TrainingSpec, s3: Any, key: str) -> list[dict[str, Any]]:
    """The examples of one file of the run, lines of the spec's method (chat or DPO), checked
    by the validator the API runs: raises :class:`~contract.chat_format.InvalidChatFile`
    naming the first bad line."""
    body = read_bytes(s3, spec.s3.bucket, key)
    return read_examples(body.splitlines(), spec.method)


@dataclass(frozen=True)
class StepPlan:
    """How examples map to optimizer steps for a given world size.

    Each rank trains on ``examples_per_rank_step`` examples per optimizer step and
    ``examples_per_rank_epoch`` per epoch, a multiple of it so every step is full, and equal
    on all ranks so collectives never wait on a rank that ran out of data. The shortfall is
    filled by repeating examples of the same epoch, as ``DistributedSampler`` pads. How a
    rank's examples of a step are split into forwards (:func:`micro_batch_size`) is not part
    of the plan: the loss and its gradient are the same whatever the split.
    """

    examples_per_rank_step: int
    examples_per_rank_epoch: int
    n_epochs: int

    @property
    def steps_per_epoch(self) -> int:
        return self.examples_per_rank_epoch // self.examples_per_rank_step

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.n_epochs


def plan_steps(num_examples: int, world_size: int, batch_size: int, n_epochs: int) -> StepPlan:
    """Per-rank examples per step and per epoch for ``batch_size`` examples per step.

    >>> plan_steps(num_examples=12, world_size=2, batch_size=4, n_epochs=5)
    StepPlan(examples_per_rank_step=2, examples_per_rank_epoch=6, n_epochs=5)
    """
    per_step = max(1, batch_size // world_size)
    per_rank = math.ceil(num_examples / world_size)
    return StepPlan(per_step, math.ceil(per_rank / per_step) * per_step, n_epochs)


def micro_batch_size(
    examples_per_rank_step: int, max_example_tokens: int, token_budget: int = TOKENS_PER_FORWARD
) -> int:
    """Examples per forward: the largest divisor of ``examples_per_rank_step`` whose examples,
    each at most ``max_example_tokens`` long, hold at most ``token_budget`` tokens; 1 when
    not even one example fits the budget.

    A divisor, so that every micro-batch of a step has as many examples and DeepSpeed's
    ``1 / gradient_accumulation_steps`` turns each micro-batch's mean over its examples into
    the step's mean over all. The bound is on the longest possible examples, not on the
    step's actual ones, so every step of a run splits the same way (DeepSpeed's
    accumulation count is fixed when the engine starts). Packed or padded, ``m`` examples
    of at most ``L`` tokens fill at most ``m * L`` token slots.

    >>> micro_batch_size(8, max_example_tokens=1024)  # 8 x 1024 fits 8192
    8
    >>> micro_batch_size(12, max_example_tokens=2048)  # 4 fit; 4 divides 12
    4
    >>> micro_batch_size(10, max_example_tokens=2048)  # 4 fit; 2 is the largest divisor <= 4
    2
    >>> micro_batch_size(4, max_example_tokens=16384)
    1
    """
    fits = max(1, token_budget // max(1, max_example_tokens))
    return max(d for d in range(1, min(fits, examples_per_rank_step) + 1)
               if examples_per_rank_step % d == 0)


def epoch_indices(
    num_examples: int, plan: StepPlan, seed: int, epoch: int, rank: int, world_size: int
) -> list[int]:
    """Example indices this rank trains on in ``epoch``: a slice of a seeded permutation.

    >>> plan = StepPlan(examples_per_rank_step=1, examples_per_rank_epoch=3, n_epochs=1)
    >>> [epoch_indices(5, plan, seed=0, epoch=0, rank=r, world_size=2) for r in (0, 1)]
    [[2, 0, 3], [1, 4, 2]]
    """
    order = list(range(num_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    needed = plan.examples_per_rank_epoch * world_size
    padded = (order * math.ceil(needed / num_examples))[:needed]
    return padded[rank::world_size]


def resume_point(step: int, plan: StepPlan) -> tuple[int, int]:
    """Where a run that already took ``step`` optimizer steps goes on: ``(epoch, at)``, the
    epoch and the position in this rank's :func:`epoch_indices` of the next example.

    Checkpoints fall between optimizer steps, so ``at`` is a multiple of
    ``examples_per_rank_step``.

    >>> plan = StepPlan(examples_per_rank_step=2, examples_per_rank_epoch=6, n_epochs=5)
    >>> [resume_point(step, plan) for step in (0, 2, 3, 14, 15)]
    [(0, 0), (0, 4), (1, 0), (4, 4), (5, 0)]
    """
    if not 0 <= step <= plan.total_steps:
        raise ValueError(f"step {step} is outside this run's 0..{plan.total_steps} steps")
    epoch, steps_into_epoch = divmod(step, plan.steps_per_epoch)
    return epoch, steps_into_epoch * plan.examples_per_rank_step
