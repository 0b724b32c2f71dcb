"""What one optimizer step minimises: the supervised token loss or DPO's preference loss.

Both objectives take the examples of one forward (a micro-batch of a rank's step) and give
the loss to backpropagate, their mean over those examples (DeepSpeed's accumulation turns it
into the step's mean), plus plain sums (loss, correct tokens, pairs...) that the loop adds across
ranks and steps before turning them into metrics, so every example weighs the same whichever
rank saw it. Metric names follow OpenAI's: ``{prefix}_loss`` and
``{prefix}_mean_token_accuracy`` with prefix ``train``, ``valid`` or ``full_valid``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist

from training.chat_template import TokenizedExample
from training.dpo import PreferenceExample, preference_step
from training.packing import build_batch, model_device, model_inputs
from training.token_loss import final_hidden_states, weighted_token_loss

Sums = dict[str, float]


class Objective(Protocol):
    @property
    def max_example_tokens(self) -> int:
        """The most tokens one example can put in a forward (it sizes micro-batches)."""
        ...

    def step(self, model: Any, examples: Sequence[Any]) -> tuple[torch.Tensor, Sums]:
        """The mean loss of one forward's examples, and its metric sums."""
        ...

    def metrics(self, sums: Sums, prefix: str) -> dict[str, float]:
        """Metrics from sums added over ranks (and batches)."""
        ...

    def num_tokens(self, example: Any) -> int:
        """Input tokens of one example, as billed in ``trained_tokens``."""
        ...


@dataclass(frozen=True)
class Supervised:
    """Next-token loss on trained assistant tokens; packed rows when ``packing``."""

    max_seq_length: int
    pad_id: int
    packing: bool

    @property
    def max_example_tokens(self) -> int:
        return self.max_seq_length

    def step(self, model: Any, examples: Sequence[TokenizedExample]) -> tuple[torch.Tensor, Sums]:
        batch = build_batch(examples, self.max_seq_length, self.pad_id, self.packing)
        hidden = final_hidden_states(model, model_inputs(batch, model_device(model)))
        loss, loss_sum, correct, count = weighted_token_loss(model, hidden, batch)
        tokens = sum(example.num_tokens for example in examples)
        sums = {"loss_sum": float(loss_sum), "correct": float(correct), "count": float(count),
                "tokens": float(tokens)}
        return loss, sums

    def metrics(self, sums: Sums, prefix: str) -> dict[str, float]:
        count = max(1.0, sums.get("count", 0.0))
        return {f"{prefix}_loss": sums.get("loss_sum", 0.0) / count,
                f"{prefix}_mean_token_accuracy": sums.get("correct", 0.0) / count}

    def num_tokens(self, example: TokenizedExample) -> int:
        return example.num_tokens


@dataclass(frozen=True)
class Preference:
    """DPO against the base model with the adapter disabled (:mod:`training.dpo`).

    Its metrics: ``{prefix}_loss`` (the DPO loss), ``{prefix}_reward_margin`` (how much more
    the policy prefers the preferred answer than the reference does, in beta units),
    ``{prefix}_reward_accuracy`` (share of pairs where that margin is positive) and
    ``{prefix}_logp_margin`` (the policy's log-prob of preferred minus rejected).
    """

    pad_id: int
    beta: float
    max_seq_length: int

    @property
    def max_example_tokens(self) -> int:
        return 2 * self.max_seq_length  # the chosen row and the rejected one

    def step(self, model: Any,
             examples: Sequence[PreferenceExample]) -> tuple[torch.Tensor, Sums]:
        loss, stats = preference_step(model, examples, self.pad_id, self.beta)
        n = float(len(examples))
        tokens = sum(self.num_tokens(example) for example in examples)
        sums = {"pairs": n, "loss": stats.loss * n, "reward_margin": stats.reward_margin * n,
                "reward_accuracy": stats.reward_accuracy * n,
                "logp_margin": stats.logp_margin * n, "tokens": float(tokens)}
        return loss, sums

    def metrics(self, sums: Sums, prefix: str) -> dict[str, float]:
        n = max(1.0, sums.get("pairs", 0.0))
        return {f"{prefix}_{name}": sums.get(name, 0.0) / n
                for name in ("loss", "reward_margin", "reward_accuracy", "logp_margin")}

    def num_tokens(self, example: PreferenceExample) -> int:
        return example.chosen.num_tokens + example.rejected.num_tokens


def add(total: Sums, more: Sums) -> Sums:
    return {key: total.get(key, 0.0) + more.get(key, 0.0) for key in {*total, *more}}


def all_reduced(sums: Sums) -> Sums:
    """``sums`` added over every rank; every rank must call this with the same keys."""
    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        totals = totals.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(totals)
    return dict(zip(keys, totals.tolist(), strict=True))
