"""Token counts of chat examples as training will see them, without torch or transformers.

The model's own chat template is rendered with jinja2 the way transformers renders it
(sandboxed, ``trim_blocks``/``lstrip_blocks``, ``raise_exception``), and the text is encoded
with the model's ``tokenizer.json`` through the ``tokenizers`` library.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer


def _raise(message: str) -> None:
    raise ValueError(message)


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
        env.filters["tojson"] = lambda v, indent=None: json.dumps(v, indent=indent)
        self._template = env.from_string(template)
        self._tokens = {name: _token_text(config.get(name))
                        for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def for_model(model_dir: Path) -> ChatTokenCounter:
        """One counter per base model for the process: loading tokenizer.json is not free."""
        return ChatTokenCounter(model_dir)

    def count(self, example: Mapping[str, Any]) -> int:
        """Tokens of one rendered example (the ``weight`` key is ours, not the template's)."""
        messages: Sequence[Mapping[str, Any]] = example["messages"]
        clean = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
        text = self._template.render(messages=clean, tools=example.get("tools"),
                                     add_generation_prompt=False, **self._tokens)
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
