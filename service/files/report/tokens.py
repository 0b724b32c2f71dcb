"""Which tokens of a conversation carry loss, as training's labels say, without transformers.

Training builds its labels in ``training/chat_template.py``: the conversation is rendered with
the model's chat template, each trained assistant turn (``weight`` not 0) is located by
character offsets (the rendering up to its generation prompt, the rendering through it), and
a token is trained when its text overlaps such a span. The service cannot import training
(it never loads torch or transformers), so the same steps run here on the template through
jinja2 and ``tokenizer.json`` through ``tokenizers`` (:class:`ChatRenderer`, which
``service.jobs.token_count.ChatTokenCounter`` is).
``tests/service/test_report_units.py`` pins the two to the same trained-token count per row
under several template families.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tokenizers import Tokenizer

Message = Mapping[str, Any]
Tool = Mapping[str, Any]


class ChatRenderer(Protocol):
    """A base model's chat template and tokenizer, as the service holds them."""

    @property
    def tokenizer(self) -> Tokenizer: ...

    def render(self, messages: Sequence[Message], tools: Sequence[Tool] | None = None,
               generation_prompt: bool = False) -> str: ...


@dataclass(frozen=True)
class Segment:
    """A run of rendered text whose tokens all carry loss, or none do."""

    text: str
    trained: bool


@dataclass(frozen=True)
class RowTokens:
    """One conversation as training sees it, cut to ``max_seq_length`` tokens.

    ``length`` is the rendering's full length (before the cut); ``trained + untrained`` is
    what training keeps of it.
    """

    length: int
    trained: int
    untrained: int
    segments: tuple[Segment, ...] = ()

    @property
    def total(self) -> int:
        return self.trained + self.untrained


def trained_spans(counter: ChatRenderer, messages: Sequence[Message],
                  tools: Sequence[Tool] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the ``[start, end)`` character span of each trained turn
    (training's function of the same name, step for step)."""
    full = counter.render(messages, tools)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start, end = _locate_turn(counter, messages, i, tools, full, cursor)
        cursor = end
        if message.get("weight", 1) != 0 and end > start:
            spans.append((start, end))
    return full, spans


def _locate_turn(counter: ChatRenderer, messages: Sequence[Message], i: int,
                 tools: Sequence[Tool] | None, full: str, cursor: int) -> tuple[int, int]:
    """Where assistant turn ``i`` lies in ``full``: where the prefix renderings say, or, for
    templates that write earlier text by what comes last (Mistral v0.3), the turn's own text
    found after the previous assistant turn."""
    prompt = counter.render(messages[:i], tools, generation_prompt=True) if i else ""
    through = counter.render(messages[: i + 1], tools)
    end = len(through.rstrip())
    if through.startswith(prompt):
        if full.startswith(through):
            return len(prompt), end
        start = len(prompt)
    else:
        start = _answer_start(counter, messages, i, tools, through)
    turn = through[start:end]
    found = full.find(turn, cursor) if turn else -1
    if found < 0:
        raise ValueError(f"cannot locate assistant message {i} in the chat template's rendering")
    return found, found + len(turn)


def _answer_start(counter: ChatRenderer, messages: Sequence[Message], i: int,
                  tools: Sequence[Tool] | None, through: str) -> int:
    """Where the text that depends on assistant message ``i`` begins in ``through``: the
    first character that differs from the same conversation ending on a stand-in answer."""
    content = messages[i].get("content") or ""
    stand_in = "\x01" if content.startswith("\x00") else "\x00"
    other = counter.render([*messages[:i], {"role": "assistant", "content": stand_in}], tools)
    return next((k for k, (a, b) in enumerate(zip(through, other, strict=False)) if a != b),
                min(len(through), len(other)))


def row_tokens(counter: ChatRenderer, conversation: Mapping[str, Any], max_seq_length: int,
               with_segments: bool = False) -> RowTokens:
    """Trained and untrained tokens of ``conversation`` within ``max_seq_length``; with
    ``with_segments``, the kept text cut where loss starts and stops (the loss preview).

    A token is trained when its characters overlap a trained span, as in training (a
    SentencePiece ``▁Hello`` starts at the space before the answer).
    """
    text, spans = trained_spans(counter, conversation["messages"], conversation.get("tools"))
    offsets = counter.tokenizer.encode(text, add_special_tokens=False).offsets
    kept = offsets[:max_seq_length]
    flags = _trained_flags(kept, spans)
    trained = sum(flags)
    segments = _segments(text, kept, flags) if with_segments else ()
    return RowTokens(length=len(offsets), trained=trained, untrained=len(kept) - trained,
                     segments=segments)


def _trained_flags(offsets: Sequence[tuple[int, int]],
                   spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Whether each token's ``[start, end)`` overlaps a span, in one walk: offsets and spans
    both go forward through the text.

    >>> _trained_flags([(0, 2), (2, 5), (5, 6), (6, 9)], [(3, 6)])
    [False, True, True, False]
    """
    flags, k = [], 0
    for start, end in offsets:
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        flags.append(k < len(spans) and spans[k][0] < end and start < spans[k][1])
    return flags


def _segments(text: str, offsets: Sequence[tuple[int, int]],
              flags: Sequence[bool]) -> tuple[Segment, ...]:
    """The text of the kept tokens in runs of equal ``trained``; a token's text reaches to
    the next token's start, so the runs join back into the kept rendering.

    >>> _segments("ab cd", [(0, 2), (2, 5)], [False, True])
    (Segment(text='ab', trained=False), Segment(text=' cd', trained=True))
    """
    out: list[Segment] = []
    for k, ((start, _end), flag) in enumerate(zip(offsets, flags, strict=True)):
        stop = offsets[k + 1][0] if k + 1 < len(offsets) else offsets[k][1]
        piece = text[start:stop]
        if out and out[-1].trained == flag:
            out[-1] = Segment(out[-1].text + piece, flag)
        else:
            out.append(Segment(piece, flag))
    return tuple(out)
