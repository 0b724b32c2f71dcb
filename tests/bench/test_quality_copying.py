"""The copy-rate split of ``bench.quality.copying``: values whose tokens change inside a JSON
string are counted apart from those that keep them, per task and arm."""

from __future__ import annotations

import doctest
import json

import bench.quality.copying as copying

PIECES = {" figs": ["Ġfigs"], '"figs': ['"', "fig", "s"], " Ada": ["ĠAda"], '"Ada': ['"', "Ada"],
          " Oslo": ["ĠOslo"], '"Oslo': ['"', "Oslo"]}


def test_doctests() -> None:
    assert doctest.testmod(copying).failed == 0


def test_table_splits_the_copy_rate_by_respelling() -> None:
    expected = {"customer": "Ada", "city": "Oslo", "items": [{"name": "figs", "qty": 2}]}
    right = json.dumps(expected, separators=(",", ":"))
    mangled = right.replace('"figs"', '"figments"')
    result = {
        "cells": {"nested_json": {"auto": {"metric": 0.5}}, "classify": {"auto": {"metric": 1.0}}},
        "tasks": {
            "nested_json": {"auto": {"answers": [
                {"expected": expected, "answer": right},
                {"expected": expected, "answer": mangled}]}},
            "classify": {"auto": {"answers": [{"expected": "billing", "answer": "billing"}]}},
        },
    }
    respelled = lambda word: copying.respelled(PIECES.__getitem__, word)  # noqa: E731
    rows = copying.table(result, respelled).splitlines()
    # Ada and Oslo keep their tokens and were copied both times; figs was copied once in two.
    assert rows[2] == "| nested_json | auto | 0.50 | 4/4 (1.00) | 1/2 (0.50) |"
    assert len(rows) == 3, "a task whose answers are plain text has no row"

