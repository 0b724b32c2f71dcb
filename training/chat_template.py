"""Turn one chat example into token ids and labels with the tokenizer's own chat template.

Which characters of the rendering are trained is :func:`contract.loss_spans.trained_spans`
(the service's data report counts from the same function); the tokenizer's offset mapping
then tells which tokens fall inside them.

An example's ``tools`` (OpenAI's function-tool list beside ``messages``) go to every
rendering, so tool definitions land where the template puts them and are never trained;
assistant ``tool_calls`` are trained like any answer, as the template writes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from contract import loss_spans
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
    """The full rendering and the character span of each trained turn
    (:func:`contract.loss_spans.trained_spans` over ``tokenizer``'s template)."""

    def template(messages: Sequence[Message], tools: Sequence[Tool] | None,
                 generation_prompt: bool) -> str:
        return render(tokenizer, messages, tools=tools, generation_prompt=generation_prompt)

    return loss_spans.trained_spans(template, messages, tools)


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
