"""``bench.quality.few_shot``: the base model asked each held-out item with training rows as
earlier turns, the question itself unchanged."""

from __future__ import annotations

import doctest

from bench.quality import few_shot
from bench.quality.tasks import TASKS


def test_a_few_shot_prompt_keeps_the_system_message_first_and_the_question_last() -> None:
    data = TASKS["nested_json"].make(0, 6, 2)
    item = few_shot.prompted(data.heldout[0], data.train[:3])
    roles = [m["role"] for m in item.messages]
    assert roles == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert item.messages[-1] == data.heldout[0].messages[-1]
    assert item.expected == data.heldout[0].expected
    assert all("weight" not in m for m in item.messages)
    assert doctest.testmod(few_shot).failed == 0
