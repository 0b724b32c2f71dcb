"""One worker's place in a run: what the loop, validation and checkpoints all read."""

from __future__ import annotations

from dataclasses import dataclass

from contract.spec import TrainingSpec
from training.data import StepPlan
from training.events import EventWriter


@dataclass
class Run:
    """One worker's place in the run."""

    spec: TrainingSpec
    plan: StepPlan
    rank: int
    world_size: int
    events: EventWriter | None
    """Rank 0's event writer; ``None`` on the other ranks."""
