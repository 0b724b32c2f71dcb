"""Turn one chat example into token ids and labels with the tokenizer's own chat template.

Why offsets rather than a marker: every model family spells its turn boundaries differently
(``<|im_start|>assistant``, ``[/INST]``, ``<|start_header_id|>``...). Rendering the
conversation twice per assistant turn, once up to the generation prompt and once through the
turn, tells us where that turn's text lies in the full rendering whatever the template is;
the tokenizer's offset mapping then tells us which tokens fall inside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (PyTorch's ``cross_entropy`` default ``ignore_index``)."""

Message = Mapping[str, Any]


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
    tokenizer: ChatTokenizer, messages: Sequence[Message], *, generation_prompt: bool = False
) -> str:
    """The template's text for ``messages``; our own ``weight`` key is not shown to it."""
    clean = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    text = tokenizer.apply_chat_template(
        clean, tokenize=False, add_generation_prompt=generation_prompt
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


def trained_spans(
    tokenizer: ChatTokenizer, messages: Sequence[Message]
) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the ``[start, end)`` character span of each trained turn.

    A turn's span starts after the generation prompt that precedes it and ends after the
    template's end-of-turn text; whitespace the template puts between turns (ChatML's
    newline after ``<|im_end|>``) is left out, since the model never generates it.
    Assistant turns with ``"weight": 0`` are skipped.
    """
    full = render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0:
            continue
        prompt = render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        through = render(tokenizer, messages[: i + 1])
        if not (through.startswith(prompt) and full.startswith(through)):
            raise ValueError(
                f"chat template does not render message {i} as a prefix of the conversation; "
                "cannot locate the assistant turn"
            )
        start, end = len(prompt), len(through.rstrip())
        if end > start:
            spans.append((start, end))
    return full, spans


def tokenize_chat(
    tokenizer: ChatTokenizer, messages: Sequence[Message], max_seq_length: int
) -> TokenizedExample:
    """Token ids of the rendered conversation, with loss only on trained assistant turns.

    A token is trained when its first character lies inside a trained span. The result is
    cut to ``max_seq_length`` tokens (the end of long conversations is lost).

    With the ChatML tiny tokenizer of the tests (``tests/support/tiny_model.py``)::

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
    text, spans = trained_spans(tokenizer, messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])[:max_seq_length]
    offsets = list(encoding["offset_mapping"])[:max_seq_length]
    labels = [
        token if _in_any(start, spans) else IGNORE_INDEX
        for token, (start, _end) in zip(input_ids, offsets, strict=True)
    ]
    return TokenizedExample(input_ids=input_ids, labels=labels)


def _in_any(position: int, spans: Sequence[tuple[int, int]]) -> bool:
    return any(start <= position < end for start, end in spans)
