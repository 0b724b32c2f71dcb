"""``dpo_format``: preference training toward one answer format, ``Answer: X``.

Each line is OpenAI's preference format: ``{"input": {"messages": [...]},
"preferred_output": [assistant], "non_preferred_output": [assistant]}``. Both outputs are
right in content; they differ only in form (``Answer: Lyon`` against ``Ada works in Lyon.``)
and the prompt never names the format, so whatever a tuned model gains in form came from the
preference, not from an instruction. Scored items must be in the preferred form and right.
"""

from __future__ import annotations

import random
import re
from typing import Any

from bench.quality.tasks.base import Answer, Drawn, Pools, Task, text_of
from bench.quality.tasks.vocab import (
    HELDOUT_PEOPLE,
    HELDOUT_PLACES,
    HELDOUT_PRODUCTS,
    TRAIN_PEOPLE,
    TRAIN_PLACES,
    TRAIN_PRODUCTS,
)

SYSTEM = "Answer the question about the text."
KINDS = ("city", "product", "name")
"""What a question asks for; ``<kind>_question`` and ``<kind>_reply`` templates pair by index."""
PREFERRED = re.compile(r"Answer: (\S.*)")

TRAIN = Pools(
    values={"name": TRAIN_PEOPLE, "city": TRAIN_PLACES, "product": TRAIN_PRODUCTS},
    templates={
        "context": ("{name} lives in {city} and sells {product}.",
                    "In {city}, {name} runs a stall with {product}.",
                    "{name} moved to {city} to make {product}."),
        "city_question": ("Where does {name} work?", "In what city is {name}?"),
        "city_reply": ("{name} works in {city}.", "{name} is in {city}."),
        "product_question": ("What does {name} sell?",),
        "product_reply": ("{name} sells {product}.",),
        "name_question": ("Who sells {product}?",),
        "name_reply": ("The {product} are sold by {name}.",),
    },
)
HELDOUT = Pools(
    values={"name": HELDOUT_PEOPLE, "city": HELDOUT_PLACES, "product": HELDOUT_PRODUCTS},
    templates={
        "context": ("Every morning {name} opens a little kiosk in {city}, offering {product}.",
                    "The {product} vendor of {city} is a person called {name}.",
                    "Ask anyone in {city}: for {product}, you go to {name}.",
                    "{name} has traded {product} at the {city} harbour for years."),
        "city_question": ("Which town is {name}'s business in?", "Where would I find {name}?"),
        "city_reply": ("{name}'s business is in {city}.", "You would find {name} in {city}."),
        "product_question": ("Name the goods {name} offers.", "What can I buy from {name}?"),
        "product_reply": ("{name} offers {product}.", "From {name} you can buy {product}."),
        "name_question": ("Whose stall has the {product}?", "Who is the {product} seller?"),
        "name_reply": ("The stall with {product} belongs to {name}.",
                       "The {product} seller is {name}."),
    },
)


def draw(rng: random.Random, pools: Pools) -> Drawn:
    slots = {"name": rng.choice(pools.values["name"]), "city": rng.choice(pools.values["city"]),
             "product": rng.choice(pools.values["product"])}
    kind = rng.choice(KINDS)
    i = rng.randrange(len(pools.templates[f"{kind}_question"]))
    context = rng.choice(pools.templates["context"]).format(**slots)
    question = pools.templates[f"{kind}_question"][i].format(**slots)
    reply = pools.templates[f"{kind}_reply"][i].format(**slots)
    return Drawn(prompt=[{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f"{context}\n{question}"}],
                 answer={"role": "assistant", "content": f"Answer: {slots[kind]}"},
                 rejected={"role": "assistant", "content": reply}, expected=slots[kind])


def well_formed(answer: Answer) -> bool:
    """In the preferred form ``Answer: X`` on one line, right or wrong."""
    text = text_of(answer)
    return text is not None and PREFERRED.fullmatch(text.strip()) is not None


def score(answer: Answer, expected: Any) -> float:
    """1.0 when the answer is exactly ``Answer: <expected>``: preferred form and right."""
    text = text_of(answer)
    return float(text is not None and text.strip() == f"Answer: {expected}")


TASK = Task(name="dpo_format", method="dpo", metric="preferred form and right answer",
            form="preferred form 'Answer: X'", train_pools=TRAIN, heldout_pools=HELDOUT,
            draw=draw, score=score, well_formed=well_formed)
