"""``classify``: a support ticket gets one intent out of a fixed label set.

The labels are the one thing training and held-out rows must share; every ticket wording is
split per label, so a held-out ticket is classified from what it means, not from a phrasing
seen in training.
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

LABELS = ("billing", "shipping", "refund", "technical", "other")
SYSTEM = f"Classify the support ticket as one of: {', '.join(LABELS)}. Answer with the label only."

TRAIN = Pools(
    values={"name": TRAIN_PEOPLE, "city": TRAIN_PLACES, "product": TRAIN_PRODUCTS},
    templates={
        "billing": (
            "I was charged {amount} dollars twice for my {product}.",
            "Why does my invoice say {amount} dollars? I expected less.",
            "My card was billed for {product} I never ordered.",
            "Can you update the billing address on my account to {city}?",
        ),
        "shipping": (
            "My {product} still haven't arrived in {city}.",
            "Where is my parcel? The tracking page has not changed in {amount} days.",
            "Can you deliver the {product} to my office in {city} instead?",
            "The courier left my {product} at the wrong door.",
        ),
        "refund": (
            "The {product} were broken, I want my money back.",
            "Please refund the {amount} dollars for the {product} I returned.",
            "I sent the {product} back {amount} days ago and got no refund yet.",
            "How do I get a refund for an order I cancelled?",
        ),
        "technical": (
            "The app crashes every time I open my orders.",
            "I can't log in, the password reset email never comes.",
            "Your website shows an error {amount} when I pay.",
            "The page with the {product} does not load on my phone.",
        ),
        "other": (
            "Do you have a shop in {city}?",
            "Just wanted to say {name} at your help desk was great.",
            "Are you hiring in {city}?",
            "Do you sell gift cards for {product}?",
        ),
    },
)
HELDOUT = Pools(
    values={"name": HELDOUT_PEOPLE, "city": HELDOUT_PLACES, "product": HELDOUT_PRODUCTS},
    templates={
        "billing": (
            "There is a {amount} dollar fee on my statement that nobody explained.",
            "Please send me a corrected invoice, the VAT number is wrong.",
            "The receipt for the {product} shows a price {amount} dollars higher than the shelf.",
            "My subscription renewed at {amount} dollars without any notice. Why?",
        ),
        "shipping": (
            "It has been {amount} days and the {product} are nowhere to be seen.",
            "Is it possible to change the delivery date for my {product}?",
            "The driver says {city} is outside the delivery zone. Is that true?",
            "Half of the {product} came today, when does the rest arrive?",
        ),
        "refund": (
            "I'd like my {amount} dollars back, the {product} didn't fit.",
            "Returned the {product} last week. When will the money reach my account?",
            "The {product} smell odd, so I'd rather have the {amount} dollars credited back.",
            "You promised a refund {amount} days ago and the money is still missing.",
        ),
        "technical": (
            "Checkout freezes on the last step with code {amount}.",
            "After the update the {product} listing is blank in your app.",
            "The password reset email never comes, I tried {amount} times.",
            "Your website shows error {amount} whenever I open the {product} page.",
        ),
        "other": (
            "What are your opening hours in {city} on holidays?",
            "Please pass my thanks to {name}, who helped me last week.",
            "Do you have a store in {city} where I can see the {product} in person?",
            "{name} is writing a school report on your company. Who founded it?",
        ),
    },
)


def draw(rng: random.Random, pools: Pools) -> Drawn:
    label = rng.choice(LABELS)
    text = rng.choice(pools.templates[label]).format(
        name=rng.choice(pools.values["name"]), city=rng.choice(pools.values["city"]),
        product=rng.choice(pools.values["product"]), amount=rng.randint(3, 99))
    return Drawn(prompt=[{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": text}],
                 answer={"role": "assistant", "content": label}, expected=label)


def well_formed(answer: Answer) -> bool:
    """One of the labels, surrounding whitespace allowed."""
    text = text_of(answer)
    return text is not None and text.strip() in LABELS


def score(answer: Answer, expected: Any) -> float:
    """1.0 when the stripped answer is exactly the label (no quotes, no sentence)."""
    text = text_of(answer)
    return float(text is not None and text.strip() == expected)


TASK = Task(name="classify", method="supervised", metric="accuracy (label exactly)",
            form="one of the labels", train_pools=TRAIN, heldout_pools=HELDOUT, draw=draw,
            score=score, well_formed=well_formed)
