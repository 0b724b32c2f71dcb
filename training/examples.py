"""The tokenized examples of a run: a ``TokenizedExample`` per chat line, a
``PreferenceExample`` (:mod:`training.dpo`) per DPO line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import AutoTokenizer

from contract.spec import Method, TrainingSpec
from training import storage
from training.chat_template import TokenizedExample, tokenize_chat
from training.data import read_jsonl
from training.dpo import tokenize_preference
from training.model_load import base_model_dir


@dataclass(frozen=True)
class RunData:
    """Tokenized examples of the run: supervised examples or DPO pairs."""

    train: list[Any]
    valid: list[Any]
    """Empty without a validation file."""
    pad_id: int


def load_data(spec: TrainingSpec) -> RunData:
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir(spec))
    s3 = storage.client(spec.s3)
    max_seq_length = spec.hyperparameters.max_seq_length

    def tokenized(key: str | None) -> list[Any]:
        if key is None:
            return []
        lines = read_jsonl(spec, s3, key)
        return tokenize_examples(lines, spec.method, tokenizer, max_seq_length)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return RunData(tokenized(spec.training_file_key), tokenized(spec.validation_file_key), pad_id)


def tokenize_examples(
    examples: Sequence[dict[str, Any]], method: Method, tokenizer: Any, max_seq_length: int
) -> list[Any]:
    """Token ids and labels of every example: a ``TokenizedExample`` per chat line, a
    ``PreferenceExample`` per DPO line."""
    if method == "dpo":
        return [tokenize_preference(tokenizer, line, max_seq_length) for line in examples]
    return tokenize_all(examples, tokenizer, max_seq_length)


def tokenize_all(
    examples: Sequence[dict[str, Any]], tokenizer: Any, max_seq_length: int
) -> list[TokenizedExample]:
    """Each example rendered with its own tool definitions, if it has any."""
    return [
        tokenize_chat(tokenizer, example["messages"], max_seq_length, tools=example.get("tools"))
        for example in examples
    ]
