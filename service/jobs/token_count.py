"""Token counts of chat examples as training will see them, without torch or transformers.

The model's own chat template is rendered with jinja2 the way transformers renders it
(sandboxed, ``trim_blocks``/``lstrip_blocks``, ``raise_exception``), and the text is encoded
with the model's ``tokenizer.json`` through the ``tokenizers`` library. Messages and tools
reach the template as they do in training (:func:`contract.chat_format.template_messages`),
so a count here is the length of the rendered example before truncation.
"""

from __future__ import annotations

import functools
import json
from array import array
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from contract.chat_format import template_messages

# The special tokens transformers hands every chat template (``special_tokens_map``).
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                   "mask_token")


def _raise(message: str) -> None:
    raise ValueError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """transformers' ``tojson``: no HTML escaping, non-ASCII kept (unlike jinja2's own)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json spells special tokens as strings or AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class ChatTokenCounter:
    def __init__(self, model_dir: Path):
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        template_path = model_dir / "chat_template.jinja"
        template = (template_path.read_text() if template_path.exists()
                    else config.get("chat_template"))
        if not isinstance(template, str):
            raise ValueError(f"{model_dir} has no chat template")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[loopcontrols])
        env.globals["raise_exception"] = _raise
        env.filters["tojson"] = _tojson
        env.globals["strftime_now"] = _strftime_now
        self._template = env.from_string(template)
        self._tokens = {name: _token_text(config[name])
                        for name in _SPECIAL_TOKENS if config.get(name) is not None}
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    @staticmethod
    def for_model(model_dir: Path) -> ChatTokenCounter:
        """One counter per base model for the process: loading tokenizer.json is not free.
        Keyed by the tokenizer's mtime too: a re-registered model's new tokenizer replaces
        the old file in the API's cache under the same path."""
        return _cached_counter(model_dir, (model_dir / "tokenizer.json").stat().st_mtime_ns)

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def render(self, messages: Sequence[Mapping[str, Any]],
               tools: Sequence[Mapping[str, Any]] | None = None,
               generation_prompt: bool = False) -> str:
        """The template's text for ``messages``, as transformers' ``apply_chat_template``
        writes it (``tokenize=False``)."""
        return self._template.render(messages=template_messages(messages),
                                     tools=list(tools) if tools else None,
                                     add_generation_prompt=generation_prompt, **self._tokens)

    def count(self, example: Mapping[str, Any]) -> int:
        """Tokens of one rendered example, with its tool definitions if it has any."""
        text = self.render(example["messages"], example.get("tools"))
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


class FileTokens:
    """The token count of each conversation a file trains on, with its line, for the ``auto``
    rule and the validation summary: kept in two arrays of 4-byte ints because a 512 MB file of
    short examples holds millions of them (as a list of tuples, some 100 bytes each).

    >>> tokens = FileTokens()
    >>> for line, count in [(1, 30), (2, 900), (2, 700), (4, 50)]:  # line 2: a DPO pair
    ...     tokens.add(line, count)
    >>> tokens.n_examples, tokens.longest, tokens.n_tokens(limit=512)
    (3, 900, 1104)
    >>> tokens.truncated(limit=512)
    (1, [2])
    """

    def __init__(self) -> None:
        self._lines = array("I")
        self._counts = array("I")
        self.n_examples = 0
        """Lines counted (a DPO line's two conversations are one example)."""

    def add(self, line: int, tokens: int) -> None:
        """One conversation of ``line``; lines come in file order."""
        if not self._lines or self._lines[-1] != line:
            self.n_examples += 1
        self._lines.append(line)
        self._counts.append(tokens)

    @property
    def longest(self) -> int | None:
        return max(self._counts, default=None)

    def n_tokens(self, limit: int) -> int:
        """Tokens trained per epoch: a conversation longer than ``limit`` is truncated to it."""
        return sum(min(count, limit) for count in self._counts)

    def truncated(self, limit: int, keep: int = 100) -> tuple[int, list[int]]:
        """How many lines have a conversation over ``limit``, and the first ``keep`` of them
        (an event names a few; all of them could be millions)."""
        n, first = 0, []
        last = 0
        for line, count in zip(self._lines, self._counts, strict=True):
            if count > limit and line != last:
                n += 1
                last = line
                if len(first) < keep:
                    first.append(line)
        return n, first


@functools.lru_cache(maxsize=8)
def _cached_counter(model_dir: Path, mtime_ns: int) -> ChatTokenCounter:
    del mtime_ns  # part of the cache key only
    return ChatTokenCounter(model_dir)
