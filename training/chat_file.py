"""Parse a chat JSONL training file, naming the first bad line the way OpenAI does.

Pure Python (json only) so the API's validator and the training driver can share it: a file
the service accepted must not fail here, and a file that fails here fails with the same
``Line N: ...`` message the user would have seen at upload.
"""

from __future__ import annotations

import json
from typing import Any

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


class InvalidTrainingFile(ValueError):
    """A line of the training file the run cannot use; ``line`` counts from 1."""

    code = "invalid_training_file"

    def __init__(self, line: int, reason: str, param: str = "training_file") -> None:
        super().__init__(f"Line {line}: {reason}")
        self.line = line
        self.reason = reason
        self.param = param

    @property
    def error_data(self) -> dict[str, Any]:
        """The ``error`` event payload (OpenAI's ``error`` object fields)."""
        return {"code": self.code, "param": self.param, "message": str(self)}


def parse_chat_jsonl(text: str) -> list[list[dict[str, Any]]]:
    """The ``messages`` list of every non-blank line, checked; raises on the first bad line.

    >>> parse_chat_jsonl('{"messages": [{"role": "user", "content": "Hi"},'
    ...                  ' {"role": "assistant", "content": "Hello!"}]}\\n')
    [[{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]]
    """
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            examples.append(parse_line(line, number))
    if not examples:
        raise InvalidTrainingFile(1, "the file has no examples")
    return examples


def parse_line(line: str, number: int) -> list[dict[str, Any]]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise InvalidTrainingFile(number, f"not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise InvalidTrainingFile(number, "expected a JSON object")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidTrainingFile(number, "missing or empty 'messages' list")
    for index, message in enumerate(messages):
        _check_message(message, index, number)
    if not any(m["role"] == "assistant" for m in messages):
        raise InvalidTrainingFile(number, "no assistant message")
    return messages


def _check_message(message: Any, index: int, number: int) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidTrainingFile(number, f"{where} is not an object")
    if message.get("role") not in ROLES:
        raise InvalidTrainingFile(number, f"{where} has an unsupported role {message.get('role')!r}")
    if not isinstance(message.get("content"), str):
        raise InvalidTrainingFile(number, f"{where} has no text 'content'")
    if message.get("weight", 1) not in (0, 1):
        raise InvalidTrainingFile(number, f"{where} has a 'weight' other than 0 or 1")
