"""``multi_turn``: a running total over two or three user turns; only the last reply trains.

Earlier assistant turns carry ``"weight": 0`` (OpenAI's chat fine-tuning format): they are
context the model reads, not answers it learns, so a fine-tune that ignored ``weight`` would
train on more answers than it should, and one that dropped the turns would lose the numbers
the final total depends on. Numbers stay single digits: the skill scored is carrying state
across turns, not arithmetic a 135M model cannot do.
"""

from __future__ import annotations

import random
from typing import Any

from bench.quality.tasks.base import Answer, Drawn, Message, Pools, Task, text_of
from bench.quality.tasks.vocab import (
    HELDOUT_PEOPLE,
    HELDOUT_PRODUCTS,
    TRAIN_PEOPLE,
    TRAIN_PRODUCTS,
)

SYSTEM = "Keep a running total of what the user adds. Reply with the total only."

TRAIN = Pools(
    values={"name": TRAIN_PEOPLE, "product": TRAIN_PRODUCTS},
    templates={
        "first": (
            "{name} puts {n} {product} in the box.",
            "The box starts with {n} {product}.",
            "{name} brings {n} {product}.",
            "We begin with {n} {product} from {name}.",
        ),
        "more": (
            "{name} adds {n} more.",
            "Then {n} more {product} go in.",
            "Another {n} {product}, please.",
            "Add {n}.",
        ),
    },
)
HELDOUT = Pools(
    values={"name": HELDOUT_PEOPLE, "product": HELDOUT_PRODUCTS},
    templates={
        "first": (
            "Count with me: {name} drops off {n} {product}.",
            "Opening stock is {n} {product}, says {name}.",
            "Let's tally {product}. {name} starts us off with {n}.",
            "First delivery from {name}: {n} {product}.",
        ),
        "more": (
            "Next, {name} tosses in {n} extra.",
            "Plus {n} {product} on top of that.",
            "{name} finds {n} {product} behind the shelf.",
            "Throw in {n} more, courtesy of {name}.",
        ),
    },
)


def draw(rng: random.Random, pools: Pools) -> Drawn:
    product = rng.choice(pools.values["product"])
    messages: list[Message] = [{"role": "system", "content": SYSTEM}]
    total = 0
    for turn in range(rng.randint(2, 3)):
        n = rng.randint(2, 9)
        total += n
        group = "first" if turn == 0 else "more"
        text = rng.choice(pools.templates[group]).format(
            name=rng.choice(pools.values["name"]), n=n, product=product)
        messages += [{"role": "user", "content": text},
                     {"role": "assistant", "content": str(total), "weight": 0}]
    *prompt, last = messages
    return Drawn(prompt=prompt, answer={**last, "weight": 1}, expected=str(total))


def well_formed(answer: Answer) -> bool:
    """A bare whole number."""
    text = text_of(answer)
    return text is not None and text.strip().isdigit()


def score(answer: Answer, expected: Any) -> float:
    """1.0 when the stripped answer is the final total."""
    text = text_of(answer)
    return float(text is not None and text.strip() == expected)


TASK = Task(name="multi_turn", method="supervised", metric="exact match of the final total",
            form="a bare number", train_pools=TRAIN, heldout_pools=HELDOUT, draw=draw,
            score=score, well_formed=well_formed)
