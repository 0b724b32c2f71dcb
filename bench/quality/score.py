"""Asking a served model the held-out items, and scoring whatever answered them.

One scoring path for every arm: the API's replies and TRL's generated texts both become
:data:`~bench.quality.tasks.Answer` values scored by the task's own ``score`` and
``well_formed``, so a difference between arms is the model's, not the reader's.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from openai import OpenAI
from openai.types.chat import ChatCompletionMessage

from bench.quality.report import Cell
from bench.quality.tasks import Answer, Example, Task


def answer_of(message: ChatCompletionMessage) -> Answer:
    """A reply as the task reads it: its ``tool_calls`` when it made any, else its text.

    A server that parsed a call out of the text returns it as ``tool_calls`` and leaves the
    text empty; one that did not leaves the call in the text, which ``parse_tool_call`` reads.
    """
    if message.tool_calls:
        return list(message.tool_calls)
    return message.content or ""


def ask(client: OpenAI, model: str, items: Sequence[Example], max_tokens: int,
        concurrency: int) -> list[Answer]:
    """Every held-out item at temperature 0, in item order."""

    def one(item: Example) -> Answer:
        extra: dict[str, Any] = {"tools": item.tools} if item.tools else {}
        out = client.chat.completions.create(model=model, messages=item.messages,  # type: ignore[arg-type]
                                             temperature=0, max_tokens=max_tokens, **extra)
        return answer_of(out.choices[0].message)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, items))


def plain(answer: Answer) -> Any:
    """An answer as JSON can hold it (SDK tool-call objects as dicts), for ``quality.json``."""
    if isinstance(answer, list):
        return [a.model_dump() if hasattr(a, "model_dump") else a for a in answer]
    return answer


def scored(task: Task, items: Sequence[Example], answers: Sequence[Answer],
           tokens: int | None = None, seconds: float | None = None) -> Cell:
    """Mean metric and well-formed rate of ``answers`` to ``items``.

    >>> from bench.quality.tasks import TASKS
    >>> task = TASKS["classify"]
    >>> items = [Example([], "billing"), Example([], "refund")]
    >>> scored(task, items, ["billing", "Refund please"])
    Cell(metric=0.5, well_formed=0.5, tokens=None, seconds=None, note='', same_as=None)
    """
    if len(items) != len(answers) or not items:
        raise ValueError(f"{len(answers)} answers to {len(items)} items")
    metric = sum(task.score(a, i.expected) for a, i in zip(answers, items, strict=True))
    formed = sum(bool(task.well_formed(a)) for a in answers)
    return Cell(metric=metric / len(items), well_formed=formed / len(items), tokens=tokens,
                seconds=seconds)


def answers_record(items: Sequence[Example], answers: Sequence[Answer],
                   task: Task) -> list[dict[str, Any]]:
    """Each item's question, expected value, answer and verdict, for ``quality.json``."""
    return [{"question": i.messages[-1].get("content"), "expected": i.expected,
             "answer": plain(a), "score": task.score(a, i.expected),
             "well_formed": bool(task.well_formed(a))}
            for i, a in zip(items, answers, strict=True)]
