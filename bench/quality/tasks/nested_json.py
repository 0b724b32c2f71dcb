"""``nested_json``: an order in a sentence becomes JSON with a list of items.

Harder than ``flat_json`` in the way real extraction is: a nested list whose length varies
(one to three items), items in the order the text names them, quantities as ints.
"""

from __future__ import annotations

import random
from typing import Any

from bench.quality.tasks.base import (
    Answer,
    Drawn,
    Pools,
    Task,
    compact,
    join_items,
    json_object,
)
from bench.quality.tasks.vocab import (
    HELDOUT_PEOPLE,
    HELDOUT_PLACES,
    HELDOUT_PRODUCTS,
    TRAIN_PEOPLE,
    TRAIN_PLACES,
    TRAIN_PRODUCTS,
)

SYSTEM = "Order as JSON: customer, city, items [{name, qty}] in text order. JSON only."

TRAIN = Pools(
    values={"customer": TRAIN_PEOPLE, "city": TRAIN_PLACES, "product": TRAIN_PRODUCTS},
    templates={"sentence": (
        "{customer} from {city} ordered {items}.",
        "New order: {items} for {customer} in {city}.",
        "Please ship {items} to {customer}, {city}.",
        "{customer} ({city}) wants {items}.",
        "Order by {customer}, delivery to {city}: {items}.",
        "Send {items} to {city} for {customer}.",
        "{customer} needs {items} at the {city} office.",
        "For {customer} in {city}: {items}.",
    )},
)
HELDOUT = Pools(
    values={"customer": HELDOUT_PEOPLE, "city": HELDOUT_PLACES, "product": HELDOUT_PRODUCTS},
    templates={"sentence": (
        "Hi, this is {customer} in {city}. I'd like {items}, please.",
        "Deliver to {city}. Customer: {customer}. Basket: {items}.",
        "{items} is what {customer} asked us to bring to {city}.",
        "Could {customer} get {items} delivered in {city}?",
        "Ship-to {city}; buyer {customer}; contents {items}.",
        "Reminder: {customer} is still waiting on {items} at their {city} address.",
        "{city} branch, customer {customer}, items: {items}.",
        "We owe {customer} {items}; they live in {city}.",
        "Package for {customer} of {city} containing {items}.",
        "Can {items} go out to {customer} before Friday? The address is in {city}.",
    )},
)


def draw(rng: random.Random, pools: Pools) -> Drawn:
    customer = rng.choice(pools.values["customer"])
    city = rng.choice(pools.values["city"])
    names = rng.sample(list(pools.values["product"]), rng.randint(1, 3))
    items = [{"name": name, "qty": rng.randint(2, 9)} for name in names]
    text = rng.choice(pools.templates["sentence"]).format(
        customer=customer, city=city,
        items=join_items([f"{i['qty']} {i['name']}" for i in items]))
    expected = {"customer": customer, "city": city, "items": items}
    return Drawn(prompt=[{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": text}],
                 answer={"role": "assistant", "content": compact(expected)},
                 expected=expected)


def well_formed(answer: Answer) -> bool:
    """JSON with exactly customer, city and items, each item exactly name and qty."""
    value = json_object(answer)
    if value is None or set(value) != {"customer", "city", "items"}:
        return False
    items = value["items"]
    return isinstance(items, list) and all(
        isinstance(i, dict) and set(i) == {"name", "qty"} for i in items)


def score(answer: Answer, expected: Any) -> float:
    """1.0 when the parsed JSON equals the order: same items, same order, qty as ints."""
    return float(json_object(answer) == expected)


TASK = Task(name="nested_json", method="supervised",
            metric="exact match of the parsed JSON", form="valid order JSON",
            train_pools=TRAIN, heldout_pools=HELDOUT, draw=draw, score=score,
            well_formed=well_formed)
