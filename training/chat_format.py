"""The chat JSONL training format: one validator for the API (before a job is queued) and
the training driver (as it reads the file). Pure Python: imports nothing beyond ``json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

MIN_EXAMPLES = 10
ROLES = {"system", "developer", "user", "assistant", "tool"}
MESSAGE_KEYS = {
    "role",
    "content",
    "name",
    "weight",
    "tool_calls",
    "tool_call_id",
    "function_call",
    "refusal",
}
EXAMPLE_KEYS = {"messages", "tools", "parallel_tool_calls", "functions"}
PREFERENCE_KEYS = {"input", "preferred_output", "non_preferred_output"}


class InvalidChatFile(ValueError):
    """A line the training format cannot accept; ``line`` is 1-based."""

    def __init__(self, line: int | None, reason: str, code: str = "invalid_training_file"):
        self.line = line
        self.reason = reason
        self.code = code
        where = f"Line {line} " if line is not None else ""
        super().__init__(f"{where}{reason}")


def parse_example(raw: bytes | str, line: int) -> dict[str, Any]:
    """Parse and check one JSONL line; return the example or raise :class:`InvalidChatFile`."""
    try:
        example = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise InvalidChatFile(line, f"is not valid JSON ({reason}).") from None
    if not isinstance(example, dict):
        raise InvalidChatFile(line, "must be a JSON object with a 'messages' list.")
    if PREFERENCE_KEYS <= set(example):
        raise InvalidChatFile(line, "is a preference (DPO) example, but the job's method is "
                              "'supervised': use 'messages' lines, or method type 'dpo'.")
    unknown = set(example) - EXAMPLE_KEYS
    if unknown:
        raise InvalidChatFile(line, f"has unrecognized key(s) {sorted(unknown)}.")
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidChatFile(line, "is missing a non-empty 'messages' list.")
    for i, msg in enumerate(messages):
        _check_message(msg, line, i)
    if not any(m["role"] == "assistant" for m in messages):
        raise InvalidChatFile(line, "has no assistant message to train on.")
    return example


def _check_message(msg: Any, line: int, i: int) -> None:
    where = f"has an invalid messages[{i}]:"
    if not isinstance(msg, dict):
        raise InvalidChatFile(line, f"{where} not an object.")
    unknown = set(msg) - MESSAGE_KEYS
    if unknown:
        raise InvalidChatFile(line, f"{where} unrecognized key(s) {sorted(unknown)}.")
    role = msg.get("role")
    if role not in ROLES:
        raise InvalidChatFile(line, f"{where} unknown role {role!r}.")
    content = msg.get("content")
    if role == "assistant" and content is None and msg.get("tool_calls"):
        pass
    elif not isinstance(content, str):
        raise InvalidChatFile(line, f"{where} 'content' must be a string.")
    if "weight" in msg and (role != "assistant" or msg["weight"] not in (0, 1)):
        raise InvalidChatFile(line, f"{where} 'weight' must be 0 or 1, on assistant messages.")
    if "tool_calls" in msg:
        _check_tool_calls(msg["tool_calls"], line, where)


def _check_tool_calls(calls: Any, line: int, where: str) -> None:
    """OpenAI's shape: ``[{"id", "type": "function", "function": {"name", "arguments"}}]``."""
    if not isinstance(calls, list) or not calls:
        raise InvalidChatFile(line, f"{where} 'tool_calls' must be a non-empty list.")
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(fn, dict) or call.get("type", "function") != "function"
                or not isinstance(fn.get("name"), str)
                or not isinstance(fn.get("arguments"), str)):
            raise InvalidChatFile(
                line, f"{where} tool_calls[{j}] must be {{\"id\", \"type\": \"function\", "
                "\"function\": {\"name\": string, \"arguments\": JSON string}}.")


def read_examples(lines: Iterable[bytes | str]) -> list[dict[str, Any]]:
    """Every example of a file, blank lines skipped; at least :data:`MIN_EXAMPLES`."""
    return [example for _, example in read_numbered_examples(lines)]


def read_numbered_examples(lines: Iterable[bytes | str]) -> list[tuple[int, dict[str, Any]]]:
    """Like :func:`read_examples`, with each example's 1-based line number (for messages)."""
    examples = []
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        examples.append((n, parse_example(raw, n)))
    if len(examples) < MIN_EXAMPLES:
        raise InvalidChatFile(
            None,
            f"Training file has {len(examples)} example(s), but must have at least "
            f"{MIN_EXAMPLES} examples.",
            code="invalid_n_examples",
        )
    return examples
