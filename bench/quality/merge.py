"""One report from several runs of the suite, each on its own tasks.

Why: the whole suite (7 tasks, the old and the new rule, TRL) takes longer on 2 CPUs than one
working session lasts, so it runs in groups of tasks (``--tasks``), each group a complete run
with every arm and TRL. Each task's row still comes from one run, where its base, arms and
TRL met the same rows on the same machine; this module only puts the rows side by side, and
refuses runs that would not compare: other settings (seed, sizes, base model, tokens), other
arms, or a task in two runs::

    python -m bench.quality.merge run-a/quality.json run-b/quality.json \\
        --results-dir bench/results
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.quality.report import TRL, Cell, render

RUN_KEYS = ("argv", "date", "machine", "code", "versions", "total_seconds")


class Mismatch(ValueError):
    """Runs that cannot share a table; the message says which key differs."""


def merged(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One result (``quality.json``'s shape) from runs on disjoint tasks.

    >>> a = {"settings": {"tasks": ["classify"], "seed": 0}, "arms_described": {"base": "b"},
    ...      "argv": "x", "date": "D", "machine": "M", "code": "c", "versions": {},
    ...      "total_seconds": 1.0, "metrics": {"classify": "m"}, "cells": {"classify": {}},
    ...      "tasks": {"classify": {}}, "resolved": {}}
    >>> b = dict(a, settings={"tasks": ["rewrite"], "seed": 0}, metrics={"rewrite": "m"},
    ...          cells={"rewrite": {}}, tasks={"rewrite": {}}, total_seconds=2.0)
    >>> m = merged([a, b])
    >>> m["settings"]["tasks"], m["total_seconds"], len(m["runs"])
    (['classify', 'rewrite'], 3.0, 2)
    >>> merged([a, dict(b, settings={"tasks": ["rewrite"], "seed": 1})])
    Traceback (most recent call last):
    ...
    bench.quality.merge.Mismatch: setting 'seed' differs between runs: 0 and 1
    """
    if not results:
        raise Mismatch("no runs to merge")
    first = results[0]
    out: dict[str, Any] = {
        "settings": {**first["settings"], "tasks": []},
        "arms_described": dict(first["arms_described"]),
        "runs": [{k: r.get(k) for k in RUN_KEYS} for r in results],
        "resolved": {}, "metrics": {}, "cells": {}, "tasks": {},
        "total_seconds": round(sum(r["total_seconds"] for r in results), 1),
    }
    for r in results:
        _check_same(first, r)
        for task in r["settings"]["tasks"]:
            if task in out["settings"]["tasks"]:
                raise Mismatch(f"task {task!r} is in two runs")
            out["settings"]["tasks"].append(task)
        for key in ("resolved", "metrics", "cells", "tasks"):
            out[key].update(r.get(key, {}))
        trl = r["arms_described"].get(TRL)
        if trl and trl not in out["arms_described"][TRL].split(" | "):
            out["arms_described"][TRL] += f" | {trl}"  # SFT in one run, DPO in another
    return out


def _check_same(first: Mapping[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in first["settings"].items():
        if key != "tasks" and other["settings"].get(key) != value:
            raise Mismatch(f"setting {key!r} differs between runs: {value!r} and "
                           f"{other['settings'].get(key)!r}")
    mine = {k: v for k, v in first["arms_described"].items() if k != TRL}
    theirs = {k: v for k, v in other["arms_described"].items() if k != TRL}
    if mine != theirs or list(first["arms_described"]) != list(other["arms_described"]):
        raise Mismatch(f"arms differ between runs: {mine} and {theirs}")


def cells_of(result: Mapping[str, Any]) -> dict[str, dict[str, Cell]]:
    return {task: {arm: Cell(**c) for arm, c in by_arm.items()}
            for task, by_arm in result["cells"].items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+", help="each run's quality.json")
    p.add_argument("--results-dir", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        result = merged([json.loads(path.read_text()) for path in args.results])
    except Mismatch as e:
        raise SystemExit(f"cannot merge: {e}") from None
    text = render(result, cells_of(result), list(result["arms_described"]))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "quality.md").write_text(text)
    (args.results_dir / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
