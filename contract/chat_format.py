"""The chat JSONL training format: one validator for the API (before a job is queued) and
the training driver (as it reads the file). Pure Python: imports nothing beyond ``json`` and
:mod:`contract.lines`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from contract.lines import LineTooLong

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

    def __reduce__(self) -> tuple[type, tuple[int | None, str, str]]:
        """Rebuilt from its fields, not its message: raised in a Ray worker, it is pickled
        back to the driver, and ``cls(message)`` failed there ("missing 1 required positional
        argument"), which hid the line from the user behind a system error."""
        return type(self), (self.line, self.reason, self.code)


Method = str
"""``supervised`` (``messages`` lines) or ``dpo`` (OpenAI's preference lines)."""


def parse_example(raw: bytes | str, line: int, method: Method = "supervised") -> dict[str, Any]:
    """Parse and check one JSONL line; return the example or raise :class:`InvalidChatFile`."""
    try:
        example = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise InvalidChatFile(line, f"is not valid JSON ({reason}).") from None
    except RecursionError:
        # Python's parser recurses once per level: a line of 100,000 '[' would otherwise
        # escape as an unexpected error, and its job would retry validation forever.
        raise InvalidChatFile(line, "is nested too deeply to be a chat example.") from None
    if not isinstance(example, dict):
        expected = "'messages' list" if method != "dpo" else "'input' and outputs"
        raise InvalidChatFile(line, f"must be a JSON object with a {expected}.")
    if method == "dpo":
        return _check_preference(example, line)
    if PREFERENCE_KEYS <= set(example):
        raise InvalidChatFile(line, "is a preference (DPO) example, but the job's method is "
                              "'supervised': use 'messages' lines, or method type 'dpo'.")
    return _check_conversation(example, line, EXAMPLE_KEYS, where="")


def _check_conversation(example: dict[str, Any], line: int, keys: set[str],
                        where: str) -> dict[str, Any]:
    unknown = set(example) - keys
    if unknown:
        raise InvalidChatFile(line, f"has unrecognized key(s) {sorted(unknown)}{where}.")
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidChatFile(line, f"is missing a non-empty 'messages' list{where}.")
    for i, msg in enumerate(messages):
        _check_message(msg, line, i)
    if not where and not any(m["role"] == "assistant" for m in messages):
        raise InvalidChatFile(line, "has no assistant message to train on.")
    return example


def _check_preference(example: dict[str, Any], line: int) -> dict[str, Any]:
    """OpenAI's DPO line: ``{"input": {"messages", "tools"?}, "preferred_output": [assistant
    message], "non_preferred_output": [assistant message]}``."""
    if "messages" in example and not PREFERENCE_KEYS & set(example):
        raise InvalidChatFile(line, "is a supervised example ('messages'), but the job's method "
                              "is 'dpo': use 'input', 'preferred_output' and "
                              "'non_preferred_output'.")
    unknown = set(example) - PREFERENCE_KEYS
    if unknown:
        raise InvalidChatFile(line, f"has unrecognized key(s) {sorted(unknown)}.")
    missing = PREFERENCE_KEYS - set(example)
    if missing:
        raise InvalidChatFile(line, f"is missing {sorted(missing)} of a preference example.")
    if not isinstance(example["input"], dict):
        raise InvalidChatFile(line, "has an 'input' that is not an object with 'messages'.")
    _check_conversation(example["input"], line, EXAMPLE_KEYS - {"functions"}, where=" in 'input'")
    for key in ("preferred_output", "non_preferred_output"):
        output = example[key]
        if (not isinstance(output, list) or len(output) != 1 or not isinstance(output[0], dict)
                or output[0].get("role") != "assistant"):
            raise InvalidChatFile(line, f"has an invalid '{key}': it must be a list of one "
                                  "assistant message.")
        _check_message(output[0], line, 0)
    return example


def preference_conversations(example: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The preferred and the rejected conversation of a DPO line, as supervised examples.

    Only the output is compared: assistant turns inside ``input`` get ``weight: 0``, and the
    output turn is always trained (a ``weight`` on it is dropped).
    """
    prompt = [{**m, "weight": 0} if m.get("role") == "assistant" else m
              for m in example["input"]["messages"]]
    extras = {k: v for k, v in example["input"].items() if k != "messages"}
    chosen, rejected = (
        {"messages": [*prompt, {k: v for k, v in example[key][0].items() if k != "weight"}],
         **extras}
        for key in ("preferred_output", "non_preferred_output"))
    return chosen, rejected


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


def as_conversations(example: dict[str, Any], method: Method) -> list[dict[str, Any]]:
    """The conversations a line trains on: itself, or a DPO line's preferred and rejected."""
    return list(preference_conversations(example)) if method == "dpo" else [example]


def read_examples(lines: Iterable[bytes | str],
                  method: Method = "supervised") -> list[dict[str, Any]]:
    """Every example of a file, blank lines skipped; at least :data:`MIN_EXAMPLES`."""
    return [example for _, example in iter_numbered_examples(lines, method)]


def read_numbered_examples(lines: Iterable[bytes | str],
                           method: Method = "supervised") -> list[tuple[int, dict[str, Any]]]:
    """Like :func:`read_examples`, with each example's 1-based line number (for messages)."""
    return list(iter_numbered_examples(lines, method))


def iter_numbered_examples(lines: Iterable[bytes | str],
                           method: Method = "supervised") -> Iterator[tuple[int, dict[str, Any]]]:
    """Each example with its 1-based line number, one at a time, blank lines skipped.

    A file of any size is checked in the memory of its longest line: the service validates
    512 MB files this way. ``lines`` may come from :func:`contract.lines.split_lines`; a line
    it refuses as too long fails here like any bad line. Too few examples are only known at
    the end: the error comes after the last example was yielded.
    """
    n_examples = 0
    try:
        for n, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            n_examples += 1
            yield n, parse_example(raw, n, method)
    except LineTooLong as e:
        raise InvalidChatFile(e.line, f"is longer than {e.limit} bytes, the most one example "
                              "may take.") from None
    if n_examples < MIN_EXAMPLES:
        raise InvalidChatFile(
            None,
            f"The file has {n_examples} example(s), but must have at least "
            f"{MIN_EXAMPLES} examples.",
            code="invalid_n_examples",
        )


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` as chat templates take them; the service's token count uses this too.

    Our ``weight`` key is dropped. Tool-call ``arguments`` go from OpenAI's JSON string to
    the object it encodes: Hugging Face templates take arguments as a dict (Qwen2.5 and Llama
    3.1 write ``arguments | tojson``, Mistral v0.3 ``function | tojson``), and a string there
    would be written as one quoted JSON string. Arguments that are not a JSON object stay.
    """
    return [
        {
            key: _parsed_calls(value) if key == "tool_calls" and isinstance(value, list) else value
            for key, value in message.items()
            if key != "weight"
        }
        for message in messages
    ]


def _parsed_calls(calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**call, "function": {**call["function"], "arguments": _json_object(arguments)}}
        if isinstance(call.get("function"), Mapping)
        and isinstance(arguments := call["function"].get("arguments"), str)
        else dict(call)
        for call in calls
    ]


def _json_object(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, dict) else text
