"""When checkpoints fall and what a checkpoint records besides DeepSpeed's state.

Pure: the driver reads a checkpoint's :class:`TrainerState` (to say where a resumed run goes
on) without importing torch or Ray.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.data import StepPlan

STATE_FILE = "trainer_state.json"
"""The :class:`TrainerState` of a checkpoint, in its folder (rank 0 writes it)."""


def checkpoint_due(step: int, plan: StepPlan, every_steps: int | None) -> bool:
    """At the end of every epoch, and every ``every_steps`` optimizer steps when set.

    >>> plan = StepPlan(examples_per_rank_step=2, examples_per_rank_epoch=6, n_epochs=2)
    >>> plan.steps_per_epoch
    3
    >>> [s for s in range(1, 7) if checkpoint_due(s, plan, every_steps=None)]
    [3, 6]
    >>> [s for s in range(1, 7) if checkpoint_due(s, plan, every_steps=2)]
    [2, 3, 4, 6]
    """
    return step % plan.steps_per_epoch == 0 or bool(every_steps and step % every_steps == 0)


@dataclass(frozen=True)
class TrainerState:
    """What a checkpoint holds besides DeepSpeed's state, to go on exactly where it stopped."""

    step: int
    """Optimizer steps taken; the next metrics event is ``step + 1``."""
    metrics: dict[str, Any] | None
    """The metrics event data of ``step`` (``None`` before the first step)."""
    shape: dict[str, int]
    """World size and step plan: data order, LR schedule and ZeRO shards depend on them."""

    @classmethod
    def fresh(cls, plan: StepPlan, world_size: int) -> TrainerState:
        return cls(0, None, run_shape(plan, world_size))

    @classmethod
    def from_json(cls, text: str | bytes) -> TrainerState:
        return cls(**json.loads(text))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def check_fits(self, plan: StepPlan, world_size: int) -> None:
        if self.shape != run_shape(plan, world_size):
            raise ValueError(
                f"the checkpoint was written by a run shaped {self.shape}; "
                f"this run is shaped {run_shape(plan, world_size)}"
            )


def run_shape(plan: StepPlan, world_size: int) -> dict[str, int]:
    """
    >>> run_shape(StepPlan(2, 6, n_epochs=5), world_size=2)
    {'world_size': 2, 'examples_per_rank_step': 2, 'examples_per_rank_epoch': 6, 'n_epochs': 5}
    """
    return {"world_size": world_size, **asdict(plan)}


def read_trainer_state(folder: Path) -> TrainerState:
    return TrainerState.from_json((folder / STATE_FILE).read_text())


def state_key(checkpoint_prefix: str) -> str:
    """The key of the :class:`TrainerState` in a checkpoint's key prefix (with or without
    its trailing slash).

    >>> state_key("jobs/j/checkpoints/step-00000012/")
    'jobs/j/checkpoints/step-00000012/trainer_state.json'
    """
    return f"{checkpoint_prefix.rstrip('/')}/{STATE_FILE}"
