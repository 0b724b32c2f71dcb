"""Which held-out values a model copied, split by whether copying them means re-spelling.

Why: the quality sweep's misses on the JSON tasks are values copied wrong (``sardines`` ->
``sparrows``, ``hammocks`` -> ``hammersocks``), and they cluster on words whose tokens inside
a JSON string differ from their tokens in the prompt. In running text a word follows a space
and is often one token (``Ġsardines``); after a quote it has no space and splits into other
pieces (``s``, ``ard``, ``ines``), so the model cannot copy token ids, it has to spell the word
out. A small base model spells rare words badly whatever the hyperparameters, which bounds
what any ``auto`` rule can reach on these tasks. This module measures that split from a
``quality.json``::

    python -m bench.quality.copying bench/results/quality.json --model-dir .openft/models/X

It needs the base model's tokenizer (transformers), imported only by :func:`main`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Tokenize = Callable[[str], list[str]]
SPACE_MARKERS = ("Ġ", "▁")
"""How byte-level BPE (GPT-2, Llama 3, SmolLM) and SentencePiece tokenizers mark a space."""


def strings(value: Any) -> Iterable[str]:
    """Every string inside ``value`` (dict values, list items), in order.

    >>> list(strings({"customer": "Ada", "items": [{"name": "figs", "qty": 2}]}))
    ['Ada', 'figs']
    """
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def respelled(tokenize: Tokenize, word: str) -> bool:
    """Whether ``word`` after a quote (in a JSON string) is cut into other pieces than
    after a space (in running text).

    >>> pieces = {" figs": ["Ġfigs"], '"figs': ['"', "fig", "s"],
    ...           " Ada": ["ĠAda"], '"Ada': ['"', "Ada"]}
    >>> respelled(pieces.__getitem__, "figs"), respelled(pieces.__getitem__, "Ada")
    (True, False)
    """
    in_text = [p.lstrip("".join(SPACE_MARKERS)) for p in tokenize(" " + word)]
    in_json = tokenize('"' + word)[1:]
    return [p for p in in_text if p] != in_json


@dataclass
class Tally:
    """Values copied exactly, out of those expected, for one arm and one kind of value."""

    copied: int = 0
    expected: int = 0

    def add(self, hit: bool) -> None:
        self.copied += hit
        self.expected += 1

    def __str__(self) -> str:
        share = self.copied / self.expected if self.expected else 0.0
        return f"{self.copied}/{self.expected} ({share:.2f})"


def copied(value: str, answer: Any) -> bool:
    """Whether the answer holds ``value`` as a whole JSON string.

    >>> copied("figs", '{"items":[{"name":"figs","qty":2}]}'), copied("fig", '{"n":"figs"}')
    (True, False)
    """
    text = answer if isinstance(answer, str) else json.dumps(answer)
    return json.dumps(value) in text


def tally(answers: Sequence[dict[str, Any]], is_respelled: Callable[[str], bool]
          ) -> dict[bool, Tally]:
    """Copy rates of one arm's answers (``quality.json`` records), keyed by re-spelling."""
    out = {False: Tally(), True: Tally()}
    for record in answers:
        for value in strings(record["expected"]):
            out[is_respelled(value)].add(copied(value, record["answer"]))
    return out


def table(result: dict[str, Any], is_respelled: Callable[[str], bool]) -> str:
    """Markdown: per JSON task and arm, values copied when their tokens stay and when they
    change."""
    lines = ["| task | arm | metric | same tokens copied | re-spelled copied |",
             "|---|---|---|---|---|"]
    for task, arms in result["tasks"].items():
        for arm, seen in arms.items():
            if not any(isinstance(r["expected"], dict) for r in seen.get("answers") or []):
                continue  # not a JSON task: the answer is plain text
            counts = tally(seen["answers"], is_respelled)
            metric = result["cells"][task][arm]["metric"]
            lines.append(f"| {task} | {arm} | {metric:.2f} | {counts[False]} | {counts[True]} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+", help="quality.json files")
    p.add_argument("--model-dir", type=Path, required=True, help="the base model's folder")
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    is_respelled = functools.cache(functools.partial(respelled, tokenizer.tokenize))
    for path in args.results:
        print(f"{path}:\n\n{table(json.loads(path.read_text()), is_respelled)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
