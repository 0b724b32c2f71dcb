"""The quality suite's numbers as a table: one row per task, a ``mean`` and a ``worst`` row.

Pure: :class:`Cell` values in, markdown out. Kept apart from the runner so the aggregation a
reader draws conclusions from (what ``mean`` and ``worst`` take, what a skipped or failed arm
shows) is tested on plain values, with no stack and no model.

>>> cells = {"classify": {"base": Cell(0.25, 1.0), "auto": Cell(0.75, 1.0, 900, 120.0)},
...          "rewrite": {"base": Cell(0.0, 0.5), "auto": Cell(0.5, 1.0, 1500, 240.0)}}
>>> print(metric_table(cells, ["base", "auto"]))
| task | base | auto | auto tokens | auto min |
|---|---|---|---|---|
| classify | 0.25 | 0.75 | 900 | 2.0 |
| rewrite | 0.00 | 0.50 | 1500 | 4.0 |
| **mean** | 0.12 | 0.62 | 1200 | 3.0 |
| **worst** | 0.00 | 0.50 | 1500 | 4.0 |
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

BASE = "base"
TRL = "trl"

Cells = Mapping[str, Mapping[str, "Cell"]]
"""``cells[task][arm]``: one arm's result on one task."""


@dataclass(frozen=True)
class Cell:
    """One arm on one task. ``None`` where the arm has no such number (the base model trains
    no tokens) or has none to give (``note`` then says why: skipped, failed)."""

    metric: float | None
    well_formed: float | None
    tokens: int | None = None
    seconds: float | None = None
    """Training time: the job's ``created_at`` to ``finished_at``, or TRL's ``train()``."""
    note: str = ""
    same_as: str | None = None
    """The arm whose model this cell is: this arm's job resolved exactly that arm's
    hyperparameters on the task, so the runner cancelled it and scored that model once."""


def mean(values: Sequence[float | None]) -> float | None:
    """Mean of the values present; ``None`` when none is.

    >>> mean([0.5, None, 1.0]), mean([None])
    (0.75, None)
    """
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def worst(values: Sequence[float | None], higher_is_better: bool = True) -> float | None:
    """The worst value present: the lowest score, or the highest cost (tokens, minutes).

    >>> worst([0.5, None, 1.0]), worst([3, 9], higher_is_better=False), worst([])
    (0.5, 9, None)
    """
    present = [v for v in values if v is not None]
    if not present:
        return None
    return min(present) if higher_is_better else max(present)


def column(cells: Cells, arm: str, value: Callable[[Cell], float | None]) -> list[float | None]:
    """One arm's value on every task, in task order (``None`` where the arm has no cell)."""
    return [value(by_arm[arm]) if arm in by_arm else None for by_arm in cells.values()]


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{round(value)}"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def _score(cell: Cell | None, value: Callable[[Cell], float | None]) -> str:
    if cell is None:
        return "-"
    if value(cell) is None and cell.note:
        return cell.note.split(":", 1)[0]  # "skipped", "failed": the reason is under the table
    return _number(value(cell))


def _table(cells: Cells, arms: Sequence[str], value: Callable[[Cell], float | None],
           with_costs: bool) -> str:
    trained = [a for a in arms if a != BASE] if with_costs else []
    header = ["task", *arms, *(f"{a} {what}" for a in trained for what in ("tokens", "min"))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, by_arm in cells.items():
        row = [task, *(_score(by_arm.get(a), value) for a in arms)]
        for a in trained:
            cell = by_arm.get(a)
            row += [_count(cell.tokens if cell else None),
                    _minutes(cell.seconds if cell else None)]
        lines.append("| " + " | ".join(row) + " |")
    for name, pick in (("mean", mean), ("worst", worst)):
        row = [f"**{name}**", *(_number(pick(column(cells, a, value))) for a in arms)]
        for a in trained:
            tokens = column(cells, a, lambda c: c.tokens)
            seconds = column(cells, a, lambda c: c.seconds)
            if name == "mean":
                row += [_count(mean(tokens)), _minutes(mean(seconds))]
            else:
                row += [_count(worst(tokens, False)), _minutes(worst(seconds, False))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def metric_table(cells: Cells, arms: Sequence[str]) -> str:
    """Each arm's metric per task, then each trained arm's tokens and minutes."""
    return _table(cells, arms, lambda c: c.metric, with_costs=True)


def well_formed_table(cells: Cells, arms: Sequence[str]) -> str:
    """Each arm's well-formed rate per task (the answer has the task's shape at all)."""
    return _table(cells, arms, lambda c: c.well_formed, with_costs=False)


def _tasks_by(cells: Cells, key: Callable[[Cell], str | None]) -> dict[tuple[str, str], list[str]]:
    """The tasks of each (arm, ``key`` of its cell), for the cells whose key is set."""
    found: dict[tuple[str, str], list[str]] = {}
    for task, by_arm in cells.items():
        for arm, cell in by_arm.items():
            if value := key(cell):
                found.setdefault((arm, value), []).append(task)
    return found


def notes(cells: Cells) -> list[str]:
    """Why a cell has no number, one line per task and arm (``- trl on rewrite: skipped: ...``)
    with the same reason given once for all the tasks it concerns."""
    return [f"- `{arm}` on {', '.join(tasks)}: {note}"
            for (arm, note), tasks in _tasks_by(cells, lambda c: c.note).items()]


def shared(cells: Cells) -> list[str]:
    """Which cells are another arm's model, one line per pair of arms.

    >>> shared({"rewrite": {"old": Cell(0.5, 1.0), "auto": Cell(0.5, 1.0, same_as="old")},
    ...         "nested_json": {"auto": Cell(0.4, 1.0, same_as="old")}})
    ['- `auto` on rewrite, nested_json: resolved what `old` resolved, so the model of `old`']
    """
    return [f"- `{arm}` on {', '.join(tasks)}: resolved what `{twin}` resolved, so the model "
            f"of `{twin}`" for (arm, twin), tasks in _tasks_by(cells, lambda c: c.same_as).items()]


def provenance(result: Mapping[str, Any]) -> str:
    """Which run (or runs, for a merged report: ``result["runs"]``) made the numbers.

    >>> one = {"argv": "--tasks classify", "date": "D", "machine": "M", "code": "abc"}
    >>> print(provenance(one))
    Run by `python -m bench.quality.run --tasks classify` on D;
    M; code at abc.
    >>> print(provenance({"runs": [one, dict(one, argv="--tasks rewrite")]}))
    Merged by `python -m bench.quality.merge` from 2 runs, each task's row from one of them:
    - `python -m bench.quality.run --tasks classify` on D; M; code at abc
    - `python -m bench.quality.run --tasks rewrite` on D; M; code at abc
    """
    if "runs" not in result:
        return (f"Run by `python -m bench.quality.run {result['argv']}` on {result['date']};\n"
                f"{result['machine']}; code at {result['code']}.")
    lines = [f"- `python -m bench.quality.run {r['argv']}` on {r['date']}; {r['machine']}; "
             f"code at {r['code']}" for r in result["runs"]]
    return "\n".join([f"Merged by `python -m bench.quality.merge` from {len(lines)} runs, each "
                      "task's row from one of them:", *lines])


def render(result: Mapping[str, Any], cells: Cells, arms: Sequence[str]) -> str:
    """The whole ``quality.md``: header, both tables, what each arm was, why cells are empty."""
    s = result["settings"]
    arm_lines = "\n".join(f"- `{name}`: {described}"
                          for name, described in result["arms_described"].items())
    why = "\n".join(notes(cells)) or "- every arm gave a number on every task"
    same = "\n".join(shared(cells)) or "- none"
    metrics = "\n".join(f"- `{t}`: {m}" for t, m in result["metrics"].items())
    resolved = "\n".join(f"- `{task}`, `{arm}`: `{json.dumps(values)}`"
                         for task, by_arm in result.get("resolved", {}).items()
                         for arm, values in by_arm.items()) or "- none"
    return f"""# Quality suite: base model, fine-tunes and TRL on {s['base_model']}

{provenance(result)}
Seed {s['seed']}; {s['n_train']} training rows and {s['n_heldout']} held-out items per task;
temperature 0 (greedy), `max_tokens={s['max_tokens']}`.

Metric (share of held-out items scored right; tokens trained and minutes of training):

{metric_table(cells, arms)}

Well-formed (share of answers in the task's shape):

{well_formed_table(cells, arms)}

`mean` is the mean over the tasks with a number; `worst` the lowest score, the most tokens
and the most minutes. Minutes: a job's `created_at` to `finished_at` (queue, validation and
upload of the adapter included), TRL's `train()` call.

Arms:

{arm_lines}

Hyperparameters as each job resolved them (`auto` filled in):

{resolved}

Arms that trained no model of their own (their job resolved an earlier arm's hyperparameters
on the same file and seed, which train the same model, so the runner cancelled it once queued
and the table repeats that arm's numbers):

{same}

Metrics:

{metrics}

Empty cells:

{why}

Whole run: {result['total_seconds']} s. Every answer is in `quality.json`.
"""
