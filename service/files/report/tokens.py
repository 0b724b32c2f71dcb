"""Which tokens of a conversation carry loss, as training's labels say, without transformers.

The trained turns' character spans come from :func:`contract.loss_spans.trained_spans`, the
function training's labels use; here the template runs through jinja2 and ``tokenizer.json``
through ``tokenizers`` (:class:`ChatRenderer`, which
``service.jobs.token_count.ChatTokenCounter`` is), since the service never loads torch or
transformers. A token is trained when its text overlaps such a span, as in training.
``tests/service/test_report_units.py`` pins the two to the same trained-token count per row
under several template families.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tokenizers import Tokenizer

from contract.loss_spans import Message, Tool, trained_spans


class ChatRenderer(Protocol):
    """A base model's chat template and tokenizer, as the service holds them: a protocol
    because the holder, ``ChatTokenCounter``, lives in ``service.jobs``, which imports
    ``service.files`` (the import contracts forbid the way back)."""

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


def row_tokens(counter: ChatRenderer, conversation: Mapping[str, Any], max_seq_length: int,
               with_segments: bool = False) -> RowTokens:
    """Trained and untrained tokens of ``conversation`` within ``max_seq_length``; with
    ``with_segments``, the kept text cut where loss starts and stops (the loss preview).

    A token is trained when its characters overlap a trained span, as in training (a
    SentencePiece ``▁Hello`` starts at the space before the answer).
    """
    text, spans = trained_spans(counter.render, conversation["messages"],
                                conversation.get("tools"))
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
