"""Turning ``"auto"`` hyperparameters into numbers once the training file is known.

The rule (also in README.md):
- ``n_epochs``: ``clamp(ceil(100 / n_examples), 3, 10)``: small files get more passes, so
  every job sees at least about 100 examples, but never fewer than 3 or more than 10 epochs.
- ``batch_size``: ``clamp(n_examples // 64, 1, 8)``; at least one example per worker, and
  rounded up to a multiple of the number of workers (each worker takes one example per
  micro-step, so other sizes cannot be honoured exactly).
- ``learning_rate_multiplier``: 1.0, times the LoRA base rate :data:`BASE_LEARNING_RATE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

BASE_LEARNING_RATE = 5e-4


@dataclass(frozen=True)
class Resolved:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.learning_rate_multiplier

    def as_dict(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size,
                "learning_rate_multiplier": self.learning_rate_multiplier,
                "n_epochs": self.n_epochs}


def resolve(requested: dict[str, Any], n_examples: int, num_workers: int) -> Resolved:
    def given(name: str) -> Any:
        value = requested.get(name, "auto")
        return None if value in ("auto", None) else value

    n_epochs = given("n_epochs") or min(10, max(3, math.ceil(100 / max(n_examples, 1))))
    batch = given("batch_size") or min(8, max(1, n_examples // 64))
    batch = max(num_workers, math.ceil(batch / num_workers) * num_workers)
    lr_mult = given("learning_rate_multiplier") or 1.0
    return Resolved(n_epochs=int(n_epochs), batch_size=int(batch),
                    learning_rate_multiplier=float(lr_mult))
