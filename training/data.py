"""Training data of a run: read the chat JSONL from S3, tokenize, shard by rank, collate.

Every rank reads and tokenizes the whole file (small next to a training step) and then takes
its own slice of a seeded per-epoch permutation, so no rank waits on another for data.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from contract.chat_format import read_examples
from training.chat_template import IGNORE_INDEX, TokenizedExample, tokenize_chat
from contract.spec import TrainingSpec

if TYPE_CHECKING:
    import torch


def read_training_file(spec: TrainingSpec, s3: Any) -> list[dict[str, Any]]:
    """Every example of the training file, checked by the validator the API runs.

    Raises :class:`~contract.chat_format.InvalidChatFile` naming the first bad line.
    """
    return read_jsonl(spec, s3, spec.training_file_key)


def read_jsonl(spec: TrainingSpec, s3: Any, key: str) -> list[dict[str, Any]]:
    """The examples of one file of the run, lines of the spec's method (chat or DPO)."""
    from training.storage import read_bytes

    body = read_bytes(s3, spec.s3.bucket, key)
    return read_examples(body.splitlines(), spec.method)


def tokenize_examples(
    examples: Sequence[dict[str, Any]], method: str, tokenizer: Any, max_seq_length: int
) -> list[Any]:
    """Token ids and labels of every example: a ``TokenizedExample`` per chat line, a
    ``PreferenceExample`` per DPO line."""
    if method == "dpo":
        from training.dpo import tokenize_preference

        return [tokenize_preference(tokenizer, line, max_seq_length) for line in examples]
    return tokenize_all(examples, tokenizer, max_seq_length)


def tokenize_all(
    examples: Sequence[dict[str, Any]], tokenizer: Any, max_seq_length: int
) -> list[TokenizedExample]:
    """Each example rendered with its own tool definitions, if it has any."""
    return [
        tokenize_chat(tokenizer, example["messages"], max_seq_length, tools=example.get("tools"))
        for example in examples
    ]


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


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padding is masked out and carries no loss.

    >>> batch = collate([TokenizedExample([5, 6, 7], [-100, 6, 7]),
    ...                  TokenizedExample([8], [8])], pad_id=0)
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist(), batch["labels"].tolist()
    ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]], [[-100, 6, 7], [8, -100, -100]])
    """
    import torch

    width = max(example.num_tokens for example in examples)

    def pad(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (width - len(values))

    return {
        "input_ids": torch.tensor([pad(e.input_ids, pad_id) for e in examples]),
        "attention_mask": torch.tensor([pad([1] * e.num_tokens, 0) for e in examples]),
        "labels": torch.tensor([pad(e.labels, IGNORE_INDEX) for e in examples]),
    }


def model_device(model: Any) -> torch.device:
    """Where a batch for ``model`` must go: a DeepSpeed engine says, a plain module's
    parameters tell."""
    device = getattr(model, "device", None)
    return device if device is not None else next(model.parameters()).device
