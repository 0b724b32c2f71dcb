"""The quality tasks by name: :data:`TASKS`, each a :class:`~bench.quality.tasks.base.Task`.

One module per task; what they share (pools, rows, the interface) is in :mod:`.base` and
:mod:`.vocab`.
"""

from __future__ import annotations

from bench.quality.tasks import (
    classify,
    dpo_format,
    flat_json,
    multi_turn,
    nested_json,
    rewrite,
    tool_call,
)
from bench.quality.tasks.base import (
    Answer,
    Drawn,
    Example,
    Method,
    Pools,
    Task,
    TaskData,
    to_jsonl,
)
from bench.quality.tasks.tool_call import parse_tool_call

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        flat_json.TASK,
        nested_json.TASK,
        classify.TASK,
        multi_turn.TASK,
        tool_call.TASK,
        tool_call.TEXT_TASK,
        rewrite.TASK,
        dpo_format.TASK,
    )
}

__all__ = ["TASKS", "Answer", "Drawn", "Example", "Method", "Pools", "Task", "TaskData",
           "parse_tool_call", "to_jsonl"]
