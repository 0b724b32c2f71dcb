"""``rewrite``: a sentence becomes a headline in one fixed style, computed by code.

The style has exactly one right answer (:func:`headline`), so a rewrite is scored by exact
match rather than by a judge: every word starts with a capital, nothing else changes, the
final punctuation goes.
"""

from __future__ import annotations

import random
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

SYSTEM = ("Rewrite the sentence as a headline: capitalize the first letter of every word, "
          "change nothing else, drop the final punctuation.")

TRAIN = Pools(
    values={"name": TRAIN_PEOPLE, "city": TRAIN_PLACES, "product": TRAIN_PRODUCTS},
    templates={"sentence": (
        "{name} opened a small shop for {product} in {city}.",
        "the council of {city} gave {name} an award.",
        "{name} sold {n} boxes of {product} at the market.",
        "a storm closed the main road into {city}.",
        "{name} will teach a class on {product} next week.",
        "prices of {product} fell in {city} this month.",
        "{name} ran {n} miles across {city} for charity.",
        "students in {city} built a robot that sorts {product}.",
    )},
)
HELDOUT = Pools(
    values={"name": HELDOUT_PEOPLE, "city": HELDOUT_PLACES, "product": HELDOUT_PRODUCTS},
    templates={"sentence": (
        "after {n} years, {name} finally left {city} with a van full of {product}.",
        "nobody expected {product} to become the pride of {city}.",
        "{name} says the secret is fresh {product} and patience.",
        "why {city} is running out of {product}, according to {name}.",
        "local hero {name} returns to {city} on foot!",
        "a festival of {product} draws {n} thousand visitors to {city}.",
        "{name} breaks the record for carrying {product} uphill.",
        "is {city} ready for a museum of {product}?",
        "thieves took {n} crates of {product} from a warehouse near {city}.",
        "{name} turns down an offer to leave {city}.",
    )},
)


def headline(sentence: str) -> str:
    """The one right rewrite: each word's first letter upper-cased, end punctuation dropped.

    Unlike ``str.title`` it leaves the rest of each word alone ("don't" stays "Don't").

    >>> headline("after 12 years, Ada left New Delhi with a van full of figs.")
    'After 12 Years, Ada Left New Delhi With A Van Full Of Figs'
    """
    words = (w[:1].upper() + w[1:] for w in sentence.split())
    return " ".join(words).rstrip(".!?")


def draw(rng: random.Random, pools: Pools) -> Drawn:
    sentence = rng.choice(pools.templates["sentence"]).format(
        name=rng.choice(pools.values["name"]), city=rng.choice(pools.values["city"]),
        product=rng.choice(pools.values["product"]), n=rng.randint(2, 40))
    expected = headline(sentence)
    return Drawn(prompt=[{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": sentence}],
                 answer={"role": "assistant", "content": expected}, expected=expected)


def well_formed(answer: Answer) -> bool:
    """One line, every word capitalized, no final punctuation: a headline, right or wrong."""
    text = text_of(answer)
    if text is None or not text.strip() or "\n" in text.strip():
        return False
    text = text.strip()
    return text[-1] not in ".!?" and not any(w[0].islower() for w in text.split())


def score(answer: Answer, expected: Any) -> float:
    """1.0 when the stripped answer is exactly the headline."""
    text = text_of(answer)
    return float(text is not None and text.strip() == expected)


TASK = Task(name="rewrite", method="supervised", metric="exact match of the headline",
            form="a headline (every word capitalized, no end punctuation)",
            train_pools=TRAIN, heldout_pools=HELDOUT, draw=draw, score=score,
            well_formed=well_formed)
