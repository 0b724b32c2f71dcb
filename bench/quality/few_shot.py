"""The base model with a few training rows in its prompt: what it can do with no fine-tune.

Why: when no ``auto`` arm moves a task (nested_json stays near 0.3 however the rule is set),
the question is whether the base model can do the task's hard part at all. A few-shot prompt
shows it without training: the task's system prompt, ``--shots`` training conversations as
earlier turns, then the held-out question, answered greedily through the API like every arm::

    python -m bench.quality.few_shot --base-url http://127.0.0.1:8000/v1 \\
        --api-key "$(cat .openft/api_key)" --tasks nested_json --out DIR

It writes ``DIR/few_shot.json`` in ``quality.json``'s shape (``cells`` and ``tasks``), so
:mod:`bench.quality.copying` reads it too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openai import OpenAI

from bench.quality import score
from bench.quality.run import add_item_arguments
from bench.quality.tasks import TASKS, Example, TaskData

ARM = "few_shot"


def prompted(item: Example, shots: Sequence[dict[str, Any]]) -> Example:
    """``item`` with the training conversations ``shots`` as turns before its question: the
    item's own system message first, each shot's without its system message or weights.

    >>> shot = {"messages": [{"role": "system", "content": "S"},
    ...                      {"role": "user", "content": "q1"},
    ...                      {"role": "assistant", "content": "a1", "weight": 1}]}
    >>> item = Example([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}], 1)
    >>> [m["content"] for m in prompted(item, [shot]).messages]
    ['S', 'q1', 'a1', 'q']
    """
    system = [m for m in item.messages if m["role"] == "system"]
    turns = [{"role": m["role"], "content": m["content"]}
             for row in shots for m in row["messages"] if m["role"] != "system"]
    rest = [m for m in item.messages if m["role"] != "system"]
    return Example([*system, *turns, *rest], item.expected, item.tools)


def run_task(client: OpenAI, model: str, name: str, data: TaskData, shots: int,
             max_tokens: int) -> dict[str, Any]:
    task = TASKS[name]
    if data.method != "supervised":
        raise SystemExit(f"{name}: a few-shot prompt needs supervised rows")
    items = [prompted(i, data.train[:shots]) for i in data.heldout]
    answers = score.ask(client, model, items, max_tokens, 4)
    cell = score.scored(task, data.heldout, answers)
    return {"cell": cell.__dict__, "answers": score.answers_record(data.heldout, answers, task)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True, help="a running openft")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    p.add_argument("--tasks", default="nested_json")
    p.add_argument("--shots", type=int, default=4)
    add_item_arguments(p)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    result: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items()
                                           if k not in ("api_key", "out")}, "cells": {},
                              "tasks": {}}
    for name in (t.strip() for t in args.tasks.split(",")):
        data = TASKS[name].make(args.seed, args.n_train, args.n_heldout)
        seen = run_task(client, args.base_model, name, data, args.shots, args.max_tokens)
        result["cells"][name] = {ARM: seen["cell"]}
        result["tasks"][name] = {ARM: {"answers": seen["answers"]}}
        print(f"{name}: {args.shots}-shot {seen['cell']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "few_shot.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
