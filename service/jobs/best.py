"""The best checkpoint of a job and the verdict on its final model, by full validation loss.

Runs write the whole validation file's loss into every checkpoint's metrics
(``full_valid_loss``) and the untrained model's into a ``baseline`` event. The service keeps
the lowest on the job row (``best_checkpoint``), recomputed from every checkpoint row each
time one is recorded, so a restarted API or a resumed run leaves it right; at success it
judges the final model against the best checkpoint and the base model.

A loss the run computed as NaN or infinite (training diverged) is stored as ``null``
(:func:`service.jobs.scheduler.ingest.json_safe`): here it reads as infinitely bad.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import CheckpointRow, JobRow

LOSS = "full_valid_loss"


class Scored(NamedTuple):
    """A checkpoint with a full validation loss (``inf`` where it diverged)."""

    id: str
    step_number: int
    fine_tuned_model_checkpoint: str
    full_valid_loss: float

    def as_field(self) -> dict[str, Any]:
        """The job object's ``best_checkpoint``."""
        return self._asdict()


def loss_of(metrics: dict[str, Any] | None) -> float | None:
    """A checkpoint's full validation loss; ``inf`` when the run computed no finite number,
    ``None`` when it has none (no validation file).

    >>> loss_of({"full_valid_loss": 0.5}), loss_of({"full_valid_loss": None}), loss_of({})
    (0.5, inf, None)
    """
    if not metrics or LOSS not in metrics:
        return None
    value = metrics[LOSS]
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else math.inf


def scored(row: CheckpointRow) -> Scored | None:
    loss = loss_of(row.metrics)
    if loss is None:
        return None
    return Scored(row.id, row.step_number, row.fine_tuned_model_checkpoint, loss)


def best_of(checkpoints: Iterable[Scored]) -> Scored | None:
    """The lowest finite loss; the earliest step of equal ones. ``None`` when none is finite.

    >>> best_of([Scored("a", 1, "m:1", 0.9), Scored("b", 2, "m:2", 0.4),
    ...          Scored("c", 3, "m:3", 0.4)]).id
    'b'
    """
    finite = [c for c in checkpoints if math.isfinite(c.full_valid_loss)]
    return min(finite, key=lambda c: (c.full_valid_loss, c.step_number), default=None)


def verdict(final: Scored | None, best: Scored | None, base_loss: float | None) -> str | None:
    """Why the final model is worse than the best checkpoint or than the base model on the
    validation file; ``None`` when it is neither (or nothing was measured).

    >>> verdict(Scored("c", 9, "m:ckpt-step-9", 0.8), Scored("b", 3, "m:ckpt-step-3", 0.5), 0.7)
    ... # doctest: +NORMALIZE_WHITESPACE
    'The final model is worse on the validation file than checkpoint m:ckpt-step-3 (step 3,
    full validation loss 0.5000) and than the base model before training (0.7000): its full
    validation loss is 0.8000. Use the best checkpoint, or train for fewer epochs.'
    """
    if final is None:
        return None
    worse = []
    if best is not None and best.step_number != final.step_number \
            and final.full_valid_loss > best.full_valid_loss:
        worse.append(f"than checkpoint {best.fine_tuned_model_checkpoint} (step "
                     f"{best.step_number}, full validation loss {best.full_valid_loss:.4f})")
    if base_loss is not None and final.full_valid_loss > base_loss:
        worse.append(f"than the base model before training ({base_loss:.4f})")
    if not worse:
        return None
    loss = (f"its full validation loss is {final.full_valid_loss:.4f}"
            if math.isfinite(final.full_valid_loss)
            else "its full validation loss is not a number (training diverged)")
    advice = "Use the best checkpoint, or train for fewer epochs" if best is not None \
        and best.step_number != final.step_number \
        else "Try a lower learning rate or fewer epochs"
    return f"The final model is worse on the validation file {' and '.join(worse)}: " \
           f"{loss}. {advice}."


def refresh_best(s: Session, job: JobRow) -> tuple[list[CheckpointRow], Scored | None]:
    """Set ``job.best_checkpoint`` from every checkpoint row of the job; returns the rows
    and the best."""
    s.flush()  # the checkpoint row just added counts
    rows = list(s.scalars(select(CheckpointRow).where(CheckpointRow.job_id == job.id)))
    best = best_of(c for c in map(scored, rows) if c is not None)
    job.best_checkpoint = best.as_field() if best is not None else None
    return rows, best


def judge_final(s: Session, job: JobRow) -> str | None:
    """At success: the best checkpoint settled, and the warning owed about the final model
    (the checkpoint of the last step), if any."""
    rows, best = refresh_best(s, job)
    final = max(rows, key=lambda r: r.step_number, default=None)
    return verdict(scored(final) if final is not None else None, best, job.base_valid_loss)
