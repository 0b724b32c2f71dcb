"""``GET /v1/files/{file_id}/report``: check what was asked, then scan the file(s).

Apart from the scan itself (:mod:`service.files.report`, which validation runs too), because
this needs what jobs know (the model's context, the ``auto`` epochs) and ``service.jobs``
already imports ``service.files``: the import contracts forbid the cycle.

The checks and the throughput query use the database (:func:`plan`); the scan reads the
bucket and takes seconds for a large file, with no database connection held (:func:`build`,
run in a worker thread by the router).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from contract.bucket import file_key
from contract.chat_format import PREFERENCE_KEYS, InvalidChatFile
from contract.lines import split_lines
from service.auth import Caller
from service.base_models.service import BaseModelUnavailable, tokenizer_dir
from service.context import AppContext
from service.db import FileRow
from service.errors import InvalidRequest, ModelNotFound
from service.files.outage import bucket_call
from service.files.report import build as b
from service.files.report.estimate import Run, estimate, measured_runs
from service.files.report.protocol import FileReport
from service.files.service import get_row
from service.jobs import hyperparameters
from service.jobs.service import model_facts
from service.jobs.token_count import ChatTokenCounter


@dataclass(frozen=True)
class Plan:
    """A report request that passed its checks."""

    training: FileRow
    validation: FileRow | None
    model: str
    runs: list[Run]


def plan(session: Session, ctx: AppContext, caller: Caller, file_id: str, model: str | None,
         validation_file: str | None) -> Plan:
    """The files and the model, checked: another organization's file is a 404 like a
    missing one, a file that is not a fine-tuning file a 400, an unknown model a 404."""
    configured = ctx.settings.base_model_configs()
    base = model if model is not None else next(iter(configured), None)
    if base is None or base not in configured:
        raise ModelNotFound(model or "(default)")
    training = _chat_file(session, caller, file_id, "file_id")
    validation = (None if validation_file is None
                  else _chat_file(session, caller, validation_file, "validation_file"))
    return Plan(training, validation, base, measured_runs(session, ctx.blobs, base))


def _chat_file(session: Session, caller: Caller, file_id: str, param: str) -> FileRow:
    row = get_row(session, caller, file_id, param=param)
    if row.purpose != "fine-tune":
        raise InvalidRequest(f"File {file_id} has purpose {row.purpose!r}; a data report is "
                             "made of 'fine-tune' files.", param=param, code="invalid_file")
    return row


def build(ctx: AppContext, plan: Plan, max_seq_length: int | None,
          n_epochs: int | None) -> FileReport:
    """Scan the training file (and the validation file against it) and assemble the report.

    ``max_seq_length`` defaults to the model's context (what ``auto`` never exceeds), so
    ``truncation`` counts the rows no run could keep whole; ``n_epochs`` to the ``auto`` rule.
    """
    limits = hyperparameters.Limits.of(ctx.settings, plan.model, model_facts(ctx, plan.model))
    try:  # the check job creation makes
        hyperparameters.check_limits({"max_seq_length": max_seq_length}, limits)
    except hyperparameters.OutOfLimits as e:
        raise InvalidRequest(str(e), param=e.param, code="invalid_value") from None
    limit = max_seq_length or limits.max_seq_length
    training = _scan(ctx, plan, plan.training, "file_id", limit)
    validation = None
    if plan.validation is not None:
        validation = (plan.validation.id, _scan(ctx, plan, plan.validation, "validation_file",
                                                limit, against=training.index))
    epochs = n_epochs or hyperparameters.resolve({}, training.rows, limits).n_epochs
    return b.report(plan.training.id, plan.model, training, validation,
                    estimate(plan.runs, training.trained + training.untrained, epochs))


def _scan(ctx: AppContext, plan: Plan, row: FileRow, param: str, limit: int,
          against: b.Index | None = None) -> b.FileScan:
    def counter() -> ChatTokenCounter:
        return ChatTokenCounter.for_model(tokenizer_dir(ctx.settings, ctx.blobs, plan.model))

    try:
        with bucket_call(row.id, "reading"):
            method, stream = sniffed(lines(ctx, row.id))
            return b.scan_file(stream, counter, method=method, max_seq_length=limit,
                               base=plan.model, against=against)
    except InvalidChatFile as e:
        raise InvalidRequest(f"File {row.id} is not a valid fine-tuning file. {e}",
                             param=param, code=e.code) from None
    except BaseModelUnavailable as e:
        raise InvalidRequest(str(e), param="model", code="model_not_available") from None


def lines(ctx: AppContext, file_id: str) -> Iterator[bytes]:
    return split_lines(ctx.blobs.iter_chunks(file_key(file_id)), ctx.settings.max_line_bytes)


def sniffed(stream: Iterator[bytes]) -> tuple[str, Iterator[bytes]]:
    """The file's method, from its first non-blank line, and all of its lines still.

    >>> method, rest = sniffed(iter([b"", b'{"messages": []}']))
    >>> method, list(rest)
    ('supervised', [b'', b'{"messages": []}'])
    """
    head: list[bytes] = []
    for line in stream:
        head.append(line)
        if line.strip():
            break
    return sniff_method(head[-1] if head else b""), itertools.chain(head, stream)


def sniff_method(first_line: bytes) -> str:
    """``dpo`` when the first line is a preference example, else ``supervised`` (the file is
    then checked as that method's, line by line).

    >>> sniff_method(b'{"input": {}, "preferred_output": [], "non_preferred_output": []}')
    'dpo'
    >>> sniff_method(b'{"messages": []}'), sniff_method(b"not json")
    ('supervised', 'supervised')
    """
    try:
        value: Any = json.loads(first_line)
    except (ValueError, RecursionError):
        return "supervised"
    return "dpo" if isinstance(value, dict) and PREFERENCE_KEYS <= set(value) else "supervised"
