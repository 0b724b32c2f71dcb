"""One pass over a chat file: the data report's counts, duplicates, findings and leakage.

The file is read as a stream of lines (:func:`contract.lines.split_lines`) and checked by the
validator jobs use, so a bad line fails here as it would fail a job, naming it. What is kept
grows slowly with the file: a 4-byte length and a 12-byte hash entry a row, the first
:data:`PER_ROW_LIMIT` per-row counts, the first :data:`~.duplicates.NEAR_ROWS` MinHash
signatures, and capped lists of lines.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jinja2 import TemplateError

from contract.chat_format import InvalidChatFile, as_conversations, iter_numbered_examples
from service.base_models.service import BaseModelUnavailable
from service.files.report import protocol as p
from service.files.report.detectors import scan
from service.files.report.duplicates import MAX_PAIRS, Index, Leak, LeakCheck, normalized
from service.files.report.tokens import ChatRenderer, RowTokens, row_tokens

PER_ROW_LIMIT = 1000
"""Rows listed in ``per_row`` (the first ones); ``per_row_truncated`` says when there are more.
The totals, lengths and truncation count every row."""
PREVIEW_ROWS = 3
"""Rows of the loss preview (the first ones)."""
TRUNCATED_LINES = 100
"""Lines of truncated rows listed; ``truncation.rows`` counts them all."""
MAX_FINDINGS = 1000


@dataclass
class FileScan:
    """What one pass over a file found."""

    max_seq_length: int
    trained: int = 0
    untrained: int = 0
    per_row: list[p.RowCount] = field(default_factory=list)
    per_row_truncated: bool = False
    lengths: array = field(default_factory=lambda: array("I"))
    """Each row's longest conversation, before truncation."""
    truncated: int = 0
    truncated_lines: list[int] = field(default_factory=list)
    previews: list[p.LossPreview] = field(default_factory=list)
    index: Index = field(default_factory=Index)
    """The file's rows, for its duplicates; empty for a file scanned ``against`` another."""
    findings: list[p.FindingOut] = field(default_factory=list)
    leaks: list[Leak] = field(default_factory=list)
    """Rows also in the training file, for a validation file scanned ``against`` it."""

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def longest(self) -> int | None:
        """The longest conversation's full length (the ``auto`` ``max_seq_length`` rule)."""
        return max(self.lengths, default=None)

    def add(self, line: int, rows: list[RowTokens]) -> None:
        trained = sum(r.trained for r in rows)
        untrained = sum(r.untrained for r in rows)
        self.trained += trained
        self.untrained += untrained
        longest = max(r.length for r in rows)
        self.lengths.append(longest)
        if len(self.per_row) < PER_ROW_LIMIT:
            self.per_row.append(p.RowCount(line=line, trained=trained, untrained=untrained,
                                           total=trained + untrained))
        else:
            self.per_row_truncated = True
        if longest > self.max_seq_length:
            self.truncated += 1
            if len(self.truncated_lines) < TRUNCATED_LINES:
                self.truncated_lines.append(line)
        if rows[0].segments and len(self.previews) < PREVIEW_ROWS:
            self.previews.append(p.LossPreview(line=line, segments=[
                p.PreviewSegment(text=s.text, trained=s.trained) for s in rows[0].segments]))


def scan_file(lines: Iterable[bytes], counter: Callable[[], ChatRenderer], *,
              method: str, max_seq_length: int, base: str,
              against: Index | None = None) -> FileScan:
    """Scan every line of a chat file (``method`` ``supervised`` or ``dpo``).

    ``counter`` is called once, at the first example (the base model's tokenizer may have to
    be fetched). Errors come in the order validation reports them: a bad line anywhere, then
    too few examples, then the model or its template (after the first such error the rest is
    still checked, not counted). ``against`` is the training file's index: the rows of this
    (validation) file found in it are :attr:`FileScan.leaks`, and this file is not indexed
    for duplicates of its own (the report shows only the training file's).
    """
    result = FileScan(max_seq_length)
    deferred: InvalidChatFile | BaseModelUnavailable | None = None
    chat: ChatRenderer | None = None
    leak = LeakCheck(against) if against is not None else None
    for line, example in iter_numbered_examples(lines, method):
        if deferred is not None:
            continue
        try:
            chat = chat or counter()
            result.add(line, _row_tokens(chat, example, method, line, base, max_seq_length,
                                         preview=len(result.previews) < PREVIEW_ROWS))
        except (InvalidChatFile, BaseModelUnavailable) as e:
            deferred = e
            continue
        text = _row_text(example, method)
        if leak is None:
            result.index.add(line, text)
        elif len(result.leaks) < MAX_PAIRS and (found := leak(line, text)) is not None:
            result.leaks.append(found)
        _add_findings(result.findings, line, example)
    if deferred is not None:
        raise deferred
    return result


def _row_tokens(chat: ChatRenderer, example: dict[str, Any], method: str, line: int,
                base: str, max_seq_length: int, preview: bool) -> list[RowTokens]:
    """Each conversation of the line (two for a DPO line), as training's labels see it."""
    try:
        return [row_tokens(chat, conversation, max_seq_length, with_segments=preview)
                for conversation in as_conversations(example, method)]
    except (ValueError, TypeError, TemplateError) as e:
        raise InvalidChatFile(line, f"cannot be rendered by the chat template of {base}: "
                              f"{e}") from None


def _row_text(example: dict[str, Any], method: str) -> str:
    """The line as duplicates compare it: its normalized conversation(s)."""
    return "\n".join(normalized(c) for c in as_conversations(example, method))


def _strings(value: Any) -> Iterator[str]:
    """Every string in a parsed line (contents, tool-call arguments, tool definitions)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _add_findings(findings: list[p.FindingOut], line: int, example: dict[str, Any]) -> None:
    seen: set[tuple[str, str]] = set()
    for text in _strings(example):
        for finding in scan(text):
            key = (finding.kind, finding.excerpt)
            if key in seen or len(findings) >= MAX_FINDINGS:
                continue
            seen.add(key)
            findings.append(p.FindingOut(line=line, kind=finding.kind, excerpt=finding.excerpt))


def lengths(values: array) -> p.Lengths:
    """The distribution of row lengths, with a histogram in powers of two.

    >>> d = lengths(array("I", [30, 100, 100, 410]))
    >>> d.min, d.p50, d.max, [(b.up_to, b.rows) for b in d.histogram]
    (30, 100, 410, [(32, 1), (64, 0), (128, 2), (256, 0), (512, 1)])
    """
    a = np.frombuffer(values, dtype=np.uint32) if len(values) else np.zeros(1, dtype=np.uint32)

    def pct(q: float) -> int:
        return int(np.percentile(a, q, method="inverted_cdf"))

    low = max(1, math.ceil(math.log2(max(int(a.min()), 1))))
    high = max(low, math.ceil(math.log2(max(int(a.max()), 1))))
    edges = np.array([2**k for k in range(low, high + 1)], dtype=np.int64)
    counts = np.bincount(np.searchsorted(edges, a, side="left"), minlength=len(edges))
    return p.Lengths(min=int(a.min()), mean=round(float(a.mean()), 1), p50=pct(50),
                     p90=pct(90), p99=pct(99), max=int(a.max()),
                     histogram=[p.HistogramBin(up_to=int(e), rows=int(c))
                                for e, c in zip(edges, counts, strict=False)])


def report(file_id: str, model: str, training: FileScan,
           validation: tuple[str, FileScan] | None, estimate: p.Estimate) -> p.FileReport:
    """The wire report of a scanned file, and of its validation file if one was given."""
    index = training.index
    return p.FileReport(
        file_id=file_id, model=model, max_seq_length=training.max_seq_length,
        rows=training.rows,
        tokens=p.TokenTotals(trained=training.trained, untrained=training.untrained,
                             total=training.trained + training.untrained),
        per_row=training.per_row, per_row_truncated=training.per_row_truncated,
        lengths=lengths(training.lengths),
        truncation=p.Truncation(rows=training.truncated, lines=training.truncated_lines),
        loss_preview=training.previews,
        duplicates=p.Duplicates(
            exact=[p.ExactDuplicate(lines=group) for group in index.exact_groups()],
            near=[p.NearDuplicate(lines=[a, b], similarity=s) for a, b, s in index.near]),
        validation=None if validation is None else p.ValidationOverlap(
            file_id=validation[0], rows=validation[1].rows,
            leaked=[p.LeakedRow(line=leak.line, training_lines=leak.training_lines,
                                kind=leak.kind)  # type: ignore[arg-type]
                    for leak in validation[1].leaks]),
        findings=training.findings, estimate=estimate)
