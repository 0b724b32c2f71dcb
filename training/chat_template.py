"""Turn one chat example into token ids and labels with the tokenizer's own chat template.

Why offsets rather than a marker: every model family spells its turn boundaries differently
(``<|im_start|>assistant``, ``[/INST]``, ``<|start_header_id|>``...). Rendering the
conversation twice per assistant turn, once up to the generation prompt and once through the
turn, tells us where that turn's text lies in the full rendering whatever the template is;
the tokenizer's offset mapping then tells us which tokens fall inside it. Templates that
render the beginning of a conversation by what comes last (Mistral v0.3) are handled by
finding the turn's own text instead (:func:`_locate_turn`).

An example's ``tools`` (OpenAI's function-tool list beside ``messages``) go to every
rendering, so tool definitions land where the template puts them and are never trained;
assistant ``tool_calls`` are trained like any answer, as the template writes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from contract.chat_format import template_messages

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (PyTorch's ``cross_entropy`` default ``ignore_index``)."""

Message = Mapping[str, Any]
Tool = Mapping[str, Any]


class ChatTokenizer(Protocol):
    """The two calls of a Hugging Face fast tokenizer this module relies on."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class TokenizedExample:
    """Model inputs of one example; ``labels[i]`` is ``input_ids[i]`` or ``IGNORE_INDEX``.

    Labels are aligned with ``input_ids`` (not shifted): the loss shifts them.
    """

    input_ids: list[int]
    labels: list[int]

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def render(
    tokenizer: ChatTokenizer,
    messages: Sequence[Message],
    *,
    tools: Sequence[Tool] | None = None,
    generation_prompt: bool = False,
) -> str:
    """The template's text for ``messages`` with the tool definitions ``tools``."""
    text = tokenizer.apply_chat_template(
        template_messages(messages),
        tools=list(tools) if tools else None,
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


def trained_spans(
    tokenizer: ChatTokenizer, messages: Sequence[Message], tools: Sequence[Tool] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the ``[start, end)`` character span of each trained turn.

    A turn's span starts after the generation prompt that precedes it and ends after the
    template's end-of-turn text; whitespace the template puts between turns (ChatML's
    newline after ``<|im_end|>``) is left out, since the model never generates it.
    Assistant turns with ``"weight": 0`` are skipped.
    """
    full = render(tokenizer, messages, tools=tools)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start, end = _locate_turn(tokenizer, messages, i, tools, full, cursor)
        cursor = end
        if message.get("weight", 1) != 0 and end > start:
            spans.append((start, end))
    return full, spans


def _locate_turn(
    tokenizer: ChatTokenizer,
    messages: Sequence[Message],
    i: int,
    tools: Sequence[Tool] | None,
    full: str,
    cursor: int,
) -> tuple[int, int]:
    """Where assistant turn ``i`` lies in ``full``, searching from ``cursor`` if need be.

    Most templates render a conversation's beginning the same whatever follows, so the turn
    is where the prefix renderings say. Some write earlier text by what comes last (Mistral
    v0.3 puts the system prompt in the final user turn and the tool list before the last
    user turn): then the turn's own text is taken from the prefix rendering and found in
    ``full`` after the previous assistant turn.
    """
    prompt = render(tokenizer, messages[:i], tools=tools, generation_prompt=True) if i else ""
    through = render(tokenizer, messages[: i + 1], tools=tools)
    end = len(through.rstrip())
    if through.startswith(prompt):
        if full.startswith(through):
            return len(prompt), end
        start = len(prompt)
    else:
        start = _answer_start(tokenizer, messages, i, tools, through)
    turn = through[start:end]
    found = full.find(turn, cursor) if turn else -1
    if found < 0:
        raise ValueError(
            f"cannot locate assistant message {i} in the chat template's rendering"
        )
    return found, found + len(turn)


def _answer_start(
    tokenizer: ChatTokenizer,
    messages: Sequence[Message],
    i: int,
    tools: Sequence[Tool] | None,
    through: str,
) -> int:
    """Where the text that depends on assistant message ``i`` begins in ``through``.

    ``through`` is compared with the same conversation whose last turn is a one-character
    answer no real answer starts with; both end on an assistant turn, so a template that
    looks at the last message renders everything before the turn alike.
    """
    content = messages[i].get("content") or ""
    stand_in = "\x01" if content.startswith("\x00") else "\x00"
    other = render(
        tokenizer, [*messages[:i], {"role": "assistant", "content": stand_in}], tools=tools
    )
    return next(
        (k for k, (a, b) in enumerate(zip(through, other, strict=False)) if a != b),
        min(len(through), len(other)),
    )


def tokenize_chat(
    tokenizer: ChatTokenizer,
    messages: Sequence[Message],
    max_seq_length: int,
    tools: Sequence[Tool] | None = None,
) -> TokenizedExample:
    """Token ids of the rendered conversation, with loss only on trained assistant turns.

    ``tools`` is the example's OpenAI tool list (``{"type": "function", "function": {...}}``
    items), rendered where the template puts tool definitions; it is never trained. A token
    is trained when its text overlaps a trained span (SentencePiece's ``▁Hello`` starts at
    the space before the answer). The result is cut to ``max_seq_length`` tokens (the end of
    long conversations is lost).

    With the ChatML tiny tokenizer of the tests (``devstack/tiny_model.py``)::

        >>> ex = tokenize_chat(tok, [{"role": "user", "content": "Hi"},
        ...                          {"role": "assistant", "content": "Hello!"}], 64)
        >>> ex.input_ids[-5:], ex.labels[-5:]
        ([201, 441, 3, 2, 201], [-100, 441, 3, 2, -100])
        >>> tok.decode([t for t in ex.labels if t != -100])
        'Hello!<|im_end|>'

    Everything before ``Hello`` (system prompt, user turn, ``<|im_start|>assistant\\n``) and
    the trailing newline carry ``-100``.
    """
    if max_seq_length < 1:
        raise ValueError("max_seq_length must be at least 1")
    text, spans = trained_spans(tokenizer, messages, tools)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])[:max_seq_length]
    offsets = list(encoding["offset_mapping"])[:max_seq_length]
    labels = [
        token if _overlaps_any(start, end, spans) else IGNORE_INDEX
        for token, (start, end) in zip(input_ids, offsets, strict=True)
    ]
    return TokenizedExample(input_ids=input_ids, labels=labels)


def _overlaps_any(start: int, end: int, spans: Sequence[tuple[int, int]]) -> bool:
    return any(start < span_end and span_start < end for span_start, span_end in spans)
