"""Where a conversation's trained assistant turns lie in its chat-template rendering.

Training builds its labels from these spans (``training/chat_template.py``, through
transformers' ``apply_chat_template``) and the service's data report counts trained tokens
from them (``service/files/report/tokens.py``, through jinja2 and ``tokenizers``): one
algorithm, here, so the report cannot drift from what training puts loss on.

Why offsets rather than a marker: every model family spells its turn boundaries differently
(``<|im_start|>assistant``, ``[/INST]``, ``<|start_header_id|>``...). Rendering the
conversation twice per assistant turn, once up to the generation prompt and once through the
turn, tells where that turn's text lies in the full rendering whatever the template is.
Templates that render the beginning of a conversation by what comes last (Mistral v0.3) are
handled by finding the turn's own text instead (:func:`_locate_turn`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

Message = Mapping[str, Any]
Tool = Mapping[str, Any]
Span = tuple[int, int]


class Render(Protocol):
    """A model's chat template: the text of ``messages`` with the tool definitions ``tools``,
    ending on the assistant's generation prompt when ``generation_prompt``."""

    def __call__(self, messages: Sequence[Message], tools: Sequence[Tool] | None,
                 generation_prompt: bool) -> str: ...


def trained_spans(render: Render, messages: Sequence[Message],
                  tools: Sequence[Tool] | None = None) -> tuple[str, list[Span]]:
    """The full rendering and the ``[start, end)`` character span of each trained turn.

    A turn's span starts after the generation prompt that precedes it and ends after the
    template's end-of-turn text; whitespace the template puts between turns (ChatML's
    newline after ``<|im_end|>``) is left out, since the model never generates it.
    Assistant turns with ``"weight": 0`` are skipped.

    >>> def chatml(messages, tools, generation_prompt):
    ...     text = "".join(f"<{m['role']}>{m['content']}</s>\\n" for m in messages)
    ...     return text + ("<assistant>" if generation_prompt else "")
    >>> full, spans = trained_spans(chatml, [{"role": "user", "content": "Hi"},
    ...                                      {"role": "assistant", "content": "Hello!"}])
    >>> [full[start:end] for start, end in spans]
    ['Hello!</s>']
    """
    full = render(messages, tools, False)
    spans: list[Span] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start, end = _locate_turn(render, messages, i, tools, full, cursor)
        cursor = end
        if message.get("weight", 1) != 0 and end > start:
            spans.append((start, end))
    return full, spans


def _locate_turn(render: Render, messages: Sequence[Message], i: int,
                 tools: Sequence[Tool] | None, full: str, cursor: int) -> Span:
    """Where assistant turn ``i`` lies in ``full``, searching from ``cursor`` if need be.

    Most templates render a conversation's beginning the same whatever follows, so the turn
    is where the prefix renderings say. Some write earlier text by what comes last (Mistral
    v0.3 puts the system prompt in the final user turn and the tool list before the last
    user turn): then the turn's own text is taken from the prefix rendering and found in
    ``full`` after the previous assistant turn.
    """
    prompt = render(messages[:i], tools, True) if i else ""
    through = render(messages[: i + 1], tools, False)
    end = len(through.rstrip())
    if through.startswith(prompt):
        if full.startswith(through):
            return len(prompt), end
        start = len(prompt)
    else:
        start = _answer_start(render, messages, i, tools, through)
    turn = through[start:end]
    found = full.find(turn, cursor) if turn else -1
    if found < 0:
        raise ValueError(f"cannot locate assistant message {i} in the chat template's rendering")
    return found, found + len(turn)


def _answer_start(render: Render, messages: Sequence[Message], i: int,
                  tools: Sequence[Tool] | None, through: str) -> int:
    """Where the text that depends on assistant message ``i`` begins in ``through``.

    ``through`` is compared with the same conversation whose last turn is a one-character
    answer no real answer starts with; both end on an assistant turn, so a template that
    looks at the last message renders everything before the turn alike.
    """
    content = messages[i].get("content") or ""
    stand_in = "\x01" if content.startswith("\x00") else "\x00"
    other = render([*messages[:i], {"role": "assistant", "content": stand_in}], tools, False)
    return next((k for k, (a, b) in enumerate(zip(through, other, strict=False)) if a != b),
                min(len(through), len(other)))
