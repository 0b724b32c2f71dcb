"""The value pools every task draws from: one for training rows, one for held-out rows.

Shared by all tasks so that the split holds across the suite too: a model fine-tuned on the
training rows of every task at once has still never seen a held-out name, city or product.
People and cities are the JSON-extraction bench's own pools (``bench/json_extraction.py``).
"""

from __future__ import annotations

from bench.json_extraction import HELDOUT_CITIES, HELDOUT_NAMES, TRAIN_CITIES, TRAIN_NAMES

TRAIN_PEOPLE: tuple[str, ...] = TRAIN_NAMES
HELDOUT_PEOPLE: tuple[str, ...] = HELDOUT_NAMES
TRAIN_PLACES: tuple[str, ...] = TRAIN_CITIES
HELDOUT_PLACES: tuple[str, ...] = HELDOUT_CITIES

TRAIN_PRODUCTS = (
    "apples", "bread rolls", "candles", "mugs", "pencils", "towels", "batteries", "lemons",
    "notebooks", "socks", "plates", "scissors", "envelopes", "onions", "sponges", "crayons",
    "tea bags", "paper clips", "light bulbs", "carrots", "spoons", "blankets", "bananas",
    "markers",
)
"""Plural nouns, always counted from 2 up, so every phrase reads right."""
HELDOUT_PRODUCTS = (
    "walnuts", "kettles", "postcards", "ladles", "hammocks", "thimbles", "doorknobs", "whisks",
    "lanterns", "figs", "marbles", "sardines", "pretzels", "coasters", "dumbbells", "umbrellas",
)
