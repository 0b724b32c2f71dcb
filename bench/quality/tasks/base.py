"""What every quality task is made of: two disjoint vocabularies, a drawing function, a metric.

A task never writes rows itself: it draws one conversation at a time (:class:`Drawn`) from the
pools of one split, and :meth:`Task.make` turns the draws into upload rows (supervised chat
lines or OpenAI's preference lines) and held-out prompts. Keeping the pools as data is what
lets the tests prove, rather than trust, that held-out rows share no names, values or sentence
shapes with training: they read the pools and search the training rows for each held-out value.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Method = Literal["supervised", "dpo"]
Split = Literal["train", "heldout"]
Message = dict[str, Any]
Answer = str | list[Any] | dict[str, Any] | None
"""What a model gave back: message text, a ``tool_calls`` list, or an already parsed dict."""

DEFAULT_TRAIN = 160
DEFAULT_HELDOUT = 60
"""Held-out items per task: about six per held-out sentence shape, so that one shape the model
gets wrong moves a score by about a tenth, not by a quarter (each task has 8-20 shapes)."""


@dataclass(frozen=True)
class Pools:
    """Everything one split may draw from.

    ``values``: the strings that end up in rows (names, cities, products...) by kind.
    ``templates``: sentence shapes by group (one group per label for a classifier), with
    ``{slot}`` placeholders filled from ``values`` or from numbers.
    Numbers are not pooled: copying a number is the skill under test, not recalling one.
    """

    values: Mapping[str, Sequence[str]]
    templates: Mapping[str, Sequence[str]]

    def all_values(self) -> set[str]:
        return {v for pool in self.values.values() for v in pool}

    def all_templates(self) -> set[str]:
        return {t for group in self.templates.values() for t in group}


@dataclass(frozen=True)
class Drawn:
    """One generated conversation before it becomes a training row or a held-out item.

    ``prompt``: the messages before the answer (system, user, earlier turns).
    ``answer``: the assistant message training teaches (the preferred one for DPO).
    ``expected``: what :attr:`Task.score` compares a model's answer with.
    ``rejected``: DPO only, the assistant message training steers away from.
    """

    prompt: list[Message]
    answer: Message
    expected: Any
    tools: list[dict[str, Any]] | None = None
    rejected: Message | None = None


@dataclass(frozen=True)
class Example:
    """One held-out item: send ``messages`` (and ``tools``) to chat.completions, then score."""

    messages: list[Message]
    expected: Any
    tools: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class TaskData:
    """``train``: JSONL rows exactly as uploaded; ``heldout``: the scored items."""

    train: list[dict[str, Any]]
    heldout: list[Example]
    method: Method


Draw = Callable[[random.Random, Pools], Drawn]


@dataclass(frozen=True)
class Task:
    """A generated task: its pools per split, how to draw a conversation, how to score one.

    ``score(answer, expected)`` is 1.0 or 0.0 per item; ``well_formed(answer)`` says whether
    the answer has the task's shape at all (valid JSON, a known label, the preferred
    format...), the second number a report shows beside the score.
    """

    name: str
    method: Method
    metric: str
    """What ``score`` measures, in words, for reports."""
    form: str
    """What ``well_formed`` checks, in words, for reports."""
    train_pools: Pools
    heldout_pools: Pools
    draw: Draw
    score: Callable[[Answer, Any], float]
    well_formed: Callable[[Answer], bool]

    def pools(self, split: Split) -> Pools:
        return self.train_pools if split == "train" else self.heldout_pools

    def make(self, seed: int, n_train: int = DEFAULT_TRAIN,
             n_heldout: int = DEFAULT_HELDOUT) -> TaskData:
        """Training rows from the training pools, held-out items from the held-out pools.

        Each split has its own random stream (seeded by task, seed and split), so asking for
        more training rows never changes the held-out items.
        """
        check_disjoint(self.train_pools, self.heldout_pools)
        rng = _rng(self.name, seed, "train")
        train = [self._row(self.draw(rng, self.train_pools)) for _ in range(n_train)]
        rng = _rng(self.name, seed, "heldout")
        heldout = distinct(lambda: _example(self.draw(rng, self.heldout_pools)), n_heldout)
        return TaskData(train=train, heldout=heldout, method=self.method)

    def _row(self, drawn: Drawn) -> dict[str, Any]:
        return preference_row(drawn) if self.method == "dpo" else chat_row(drawn)


def distinct(draw: Callable[[], Example], n: int, tries_per_item: int = 50) -> list[Example]:
    """``n`` held-out items with different prompts: a greedy model answers a repeated prompt
    the same way, so a repeat would count one answer twice in the score.

    >>> from itertools import cycle
    >>> items = cycle([Example([{"role": "user", "content": c}], c) for c in "aab"])
    >>> [i.expected for i in distinct(lambda: next(items), 2)]
    ['a', 'b']
    """
    items: list[Example] = []
    seen: set[str] = set()
    for _ in range(n * tries_per_item):
        if len(items) == n:
            break
        item = draw()
        key = json.dumps([item.messages, item.tools], sort_keys=True)
        if key not in seen:
            seen.add(key)
            items.append(item)
    if len(items) < n:
        raise ValueError(f"the held-out pools give only {len(items)} different items, not {n}")
    return items


def _rng(task: str, seed: int, split: Split) -> random.Random:
    return random.Random(f"{task}-{seed}-{split}")


def check_disjoint(train: Pools, heldout: Pools) -> None:
    """Refuse pools that would let a held-out row repeat a training value or template."""
    overlap = (train.all_values() & heldout.all_values()) | (
        train.all_templates() & heldout.all_templates())
    if overlap:
        raise ValueError(f"held-out pools overlap the training pools: {sorted(overlap)}")


def chat_row(drawn: Drawn) -> dict[str, Any]:
    """A supervised line: ``{"messages": [...prompt, answer], "tools"?}``."""
    row: dict[str, Any] = {"messages": [*drawn.prompt, drawn.answer]}
    if drawn.tools:
        row["tools"] = drawn.tools
    return row


def preference_row(drawn: Drawn) -> dict[str, Any]:
    """OpenAI's DPO line: ``{"input": {"messages", "tools"?}, "preferred_output": [answer],
    "non_preferred_output": [rejected]}``."""
    if drawn.rejected is None:
        raise ValueError("a preference row needs a rejected answer")
    prompt: dict[str, Any] = {"messages": drawn.prompt}
    if drawn.tools:
        prompt["tools"] = drawn.tools
    return {"input": prompt, "preferred_output": [drawn.answer],
            "non_preferred_output": [drawn.rejected]}


def _example(drawn: Drawn) -> Example:
    # chat.completions takes no "weight": it is a training-file key only.
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in drawn.prompt]
    return Example(messages=messages, expected=drawn.expected, tools=drawn.tools)


def to_jsonl(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """The rows as the bytes of a ``purpose="fine-tune"`` upload."""
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def compact(value: Any) -> str:
    """JSON without spaces: the fewest tokens for the model to write.

    >>> compact({"name": "Ada", "age": 36})
    '{"name":"Ada","age":36}'
    """
    return json.dumps(value, separators=(",", ":"))


def text_of(answer: Answer) -> str | None:
    """The answer's text, or None when the model answered with something else."""
    return answer if isinstance(answer, str) else None


def json_object(answer: Answer) -> dict[str, Any] | None:
    """The answer as a JSON object (surrounding whitespace allowed), else None.

    >>> json_object(' {"a": 1}\\n')
    {'a': 1}
    >>> json_object('[1]') is None, json_object('Sure! {"a": 1}') is None
    (True, True)
    """
    text = text_of(answer)
    if text is None:
        return None
    try:
        value = json.loads(text.strip())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def join_items(parts: Sequence[str]) -> str:
    """English list: ``a``, ``a and b``, ``a, b and c``.

    >>> join_items(["2 figs"]), join_items(["2 figs", "1 kettle", "3 stamps"])
    ('2 figs', '2 figs, 1 kettle and 3 stamps')
    """
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
