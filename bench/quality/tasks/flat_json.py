"""``flat_json``: a sentence about a person becomes ``{"name","age","city"}``.

The JSON-extraction bench's task (``bench/json_extraction.py``), its pools, templates, system
prompt and parser, behind the suite's interface so it is scored beside the others.
"""

from __future__ import annotations

import random
from typing import Any

from bench.json_extraction import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, make_rows, parse_answer
from bench.quality.tasks.base import Answer, Drawn, Pools, Task, text_of
from bench.quality.tasks.vocab import HELDOUT_PEOPLE, HELDOUT_PLACES, TRAIN_PEOPLE, TRAIN_PLACES

TRAIN = Pools(values={"name": TRAIN_PEOPLE, "city": TRAIN_PLACES},
              templates={"sentence": TRAIN_TEMPLATES})
HELDOUT = Pools(values={"name": HELDOUT_PEOPLE, "city": HELDOUT_PLACES},
                templates={"sentence": HELDOUT_TEMPLATES})


def draw(rng: random.Random, pools: Pools) -> Drawn:
    (row,) = make_rows(rng, 1, pools.values["name"], pools.values["city"],
                       pools.templates["sentence"])
    messages = row.messages()
    expected = {"name": row.person.name, "age": row.person.age, "city": row.person.city}
    return Drawn(prompt=messages[:-1], answer=messages[-1], expected=expected)


def well_formed(answer: Answer) -> bool:
    """JSON with exactly the keys name, age and city."""
    text = text_of(answer)
    return text is not None and parse_answer(text) is not None


def score(answer: Answer, expected: Any) -> float:
    """1.0 when the parsed JSON equals the truth, age as an int."""
    text = text_of(answer)
    return float(text is not None and parse_answer(text) == expected)


TASK = Task(name="flat_json", method="supervised", metric="exact match of the parsed JSON",
            form="valid JSON with keys name, age, city", train_pools=TRAIN, heldout_pools=HELDOUT,
            draw=draw, score=score, well_formed=well_formed)
