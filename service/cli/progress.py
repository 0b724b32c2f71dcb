"""A job's progress as its events tell it: step of total, ETA, the latest losses. Pure.

The ETA is measured from the events' own ``created_at`` (steps done since the first metrics
event seen, over the time they took), not from when this process read them: following a job
that ran for an hour replays its events in a second and still shows the right pace.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Progress:
    step: int = 0
    total_steps: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    """The whole validation file's loss when the run reported it, else the sampled one."""
    eta_seconds: float | None = None
    first: tuple[int, int] | None = None
    """(step, created_at) of the first metrics event seen: where the pace is measured from."""


def advance(progress: Progress, event: dict[str, Any]) -> Progress:
    """The progress after ``event``; message events change nothing.

    >>> p = advance(Progress(), {"type": "metrics", "created_at": 100,
    ...                          "data": {"step": 1, "total_steps": 11, "train_loss": 2.5}})
    >>> p = advance(p, {"type": "metrics", "created_at": 110,
    ...                 "data": {"step": 6, "total_steps": 11, "train_loss": 1.5,
    ...                          "valid_loss": 1.75}})
    >>> (p.step, p.total_steps, p.train_loss, p.valid_loss, p.eta_seconds)
    (6, 11, 1.5, 1.75, 10.0)
    """
    data = event.get("data") or {}
    if event.get("type") != "metrics" or not isinstance(data.get("step"), int):
        return progress
    step, at = data["step"], int(event.get("created_at") or 0)
    first = progress.first or (step, at)
    total = data.get("total_steps") or progress.total_steps
    valid = data.get("full_valid_loss", data.get("valid_loss"))
    return replace(
        progress, step=step, total_steps=total, first=first,
        train_loss=_number(data.get("train_loss"), progress.train_loss),
        valid_loss=_number(valid, progress.valid_loss),
        eta_seconds=eta_seconds(first, (step, at), total))


def eta_seconds(first: tuple[int, int], latest: tuple[int, int],
                total: int | None) -> float | None:
    """Seconds left at the pace from ``first`` to ``latest`` (each ``(step, time)``); None
    until two events at different steps and times give a pace.

    >>> eta_seconds((0, 0), (10, 20), 30)
    40.0
    >>> eta_seconds((5, 7), (5, 7), 30) is None
    True
    """
    steps, seconds = latest[0] - first[0], latest[1] - first[1]
    if total is None or steps <= 0 or seconds <= 0:
        return None
    return max(total - latest[0], 0) * seconds / steps


def _number(value: Any, previous: float | None) -> float | None:
    return float(value) if isinstance(value, int | float) else previous


def clock(seconds: float | None) -> str:
    """``H:MM:SS``, or ``-:--:--`` while unknown.

    >>> clock(3725.4), clock(None)
    ('1:02:05', '-:--:--')
    """
    if seconds is None:
        return "-:--:--"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def step_text(p: Progress) -> str:
    """Where the run is; ``?`` while the total is unknown.

    >>> step_text(Progress(step=3, total_steps=12)), step_text(Progress())
    ('step 3/12', 'step 0/?')
    """
    return f"step {p.step}/{p.total_steps if p.total_steps else '?'}"


def losses_text(p: Progress) -> str:
    """The latest losses; ``-`` for one not reported yet.

    >>> losses_text(Progress(train_loss=1.23456, valid_loss=None))
    'train loss 1.2346  valid loss -'
    """
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"
    return f"train loss {fmt(p.train_loss)}  valid loss {fmt(p.valid_loss)}"


def line(p: Progress) -> str:
    """One line for logs (no terminal to draw a bar on).

    >>> line(Progress(step=4, total_steps=8, train_loss=0.5, eta_seconds=12))
    'step 4/8  ETA 0:00:12  train loss 0.5000  valid loss -'
    """
    return f"{step_text(p)}  ETA {clock(p.eta_seconds)}  {losses_text(p)}"
