"""What the CLI shows a person: rich tables of API objects and of the data report.

Every function takes the plain JSON objects the API answers (dicts) and returns a renderable;
nothing here talks to the server or prints.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from service.cli.progress import clock

STATUS_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow",
                "running": "cyan", "paused": "magenta"}
LEVEL_STYLE = {"warn": "yellow", "error": "red"}


def when(timestamp: int | None) -> str:
    """A Unix time as UTC.

    >>> when(0), when(None)
    ('1970-01-01 00:00:00', '-')
    """
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def status(value: str | None) -> Text:
    return Text(value or "-", style=STATUS_STYLE.get(value or "", ""))


def _table(*columns: str) -> Table:
    table = Table()
    for name in columns:
        # ids and model names are copied from here: never wrapped or cut
        table.add_column(name, overflow="fold")
    return table


def fields_table(rows: Iterable[tuple[str, Any]]) -> Table:
    """One object as field / value rows, no header or box."""
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, value if isinstance(value, Text) else _text(value))
    return table


def _text(value: Any, style: str = "") -> Text:
    """A value as a cell: a Text, so that ``[...]`` and ``:name:`` in ids and messages are
    shown as they are, never read as markup or emoji codes."""
    return Text("-" if value is None or value == "" else str(value), style=style)


# -- API objects -----------------------------------------------------------------------------

def files_table(files: Iterable[dict[str, Any]]) -> Table:
    table = _table("id", "filename", "purpose", "bytes", "created")
    for f in files:
        table.add_row(_text(f["id"]), _text(f.get("filename")), _text(f.get("purpose")),
                      f"{f.get('bytes') or 0:,}", when(f.get("created_at")))
    return table


def jobs_table(jobs: Iterable[dict[str, Any]]) -> Table:
    table = _table("id", "model", "status", "fine-tuned model", "created")
    for j in jobs:
        table.add_row(_text(j["id"]), _text(j.get("model")), status(j.get("status")),
                      _text(j.get("fine_tuned_model")), when(j.get("created_at")))
    return table


def job_details(job: dict[str, Any]) -> Table:
    """One job as field / value rows, extensions (best checkpoint, base loss) included."""
    method = job.get("method") or {}
    kind = method.get("type") or "supervised"
    hyper = (method.get(kind) or {}).get("hyperparameters") or job.get("hyperparameters") or {}
    rows: list[tuple[str, Any]] = [
        ("id", job.get("id")), ("status", status(job.get("status"))),
        ("model", job.get("model")), ("method", kind),
        ("training file", job.get("training_file")),
        ("validation file", job.get("validation_file")),
        ("hyperparameters", ", ".join(f"{k}={v}" for k, v in hyper.items()) or None),
        ("created", when(job.get("created_at"))), ("finished", when(job.get("finished_at"))),
        ("trained tokens", job.get("trained_tokens")),
        ("fine-tuned model", job.get("fine_tuned_model")),
    ]
    if job.get("base_valid_loss") is not None:
        rows.append(("base model valid loss", f"{job['base_valid_loss']:.4f}"))
    best = job.get("best_checkpoint")
    if best:
        rows.append(("best checkpoint", best_checkpoint_text(best)))
    error = job.get("error") or {}
    if error.get("message"):
        rows.append(("error", Text(error_text(error), style="red")))
    return fields_table(rows)


def best_checkpoint_text(best: dict[str, Any]) -> str:
    loss = best.get("full_valid_loss")
    return (f"{best.get('fine_tuned_model_checkpoint')} (step {best.get('step_number')}"
            + (f", valid loss {loss:.4f})" if isinstance(loss, int | float) else ")"))


def error_text(error: dict[str, Any]) -> str:
    """A job's error as the user reads it: message and code.

    >>> error_text({"message": "Line 3: no messages", "code": "invalid_training_file"})
    'Line 3: no messages (code: invalid_training_file)'
    """
    code = error.get("code")
    return f"{error.get('message')}" + (f" (code: {code})" if code else "")


def event_line(event: dict[str, Any]) -> Text:
    """A message event as one line: time, level (when not info), message."""
    level = event.get("level") or "info"
    text = Text()
    text.append(f"{when(event.get('created_at'))}  ", style="dim")
    if level != "info":
        text.append(f"{level}: ", style=LEVEL_STYLE.get(level, "bold"))
    text.append(event.get("message") or "")
    return text


def events_table(events: Iterable[dict[str, Any]]) -> Table:
    table = _table("created", "level", "type", "message")
    for e in events:
        level = e.get("level") or "info"
        table.add_row(when(e.get("created_at")), Text(level, style=LEVEL_STYLE.get(level, "")),
                      _text(e.get("type")), _text(e.get("message")))
    return table


def checkpoints_table(checkpoints: Iterable[dict[str, Any]], best_id: str | None) -> Table:
    """Checkpoints with their losses; the job's best checkpoint marked with a star."""
    table = _table("", "step", "checkpoint model", "train loss", "valid loss",
                   "full valid loss")
    for c in checkpoints:
        m = c.get("metrics") or {}
        table.add_row("★" if c.get("id") == best_id else "", str(c.get("step_number")),
                      _text(c.get("fine_tuned_model_checkpoint")), _loss(m.get("train_loss")),
                      _loss(m.get("valid_loss")), _loss(m.get("full_valid_loss")))
    return table


def models_table(models: Iterable[dict[str, Any]]) -> Table:
    table = _table("id", "owned by", "created")
    for m in models:
        table.add_row(_text(m["id"]), _text(m.get("owned_by")), when(m.get("created")))
    return table


def _loss(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


# -- the data report -------------------------------------------------------------------------

def report(r: dict[str, Any]) -> Group:
    """The data report (docs/api.md, data report) as a few small tables, each under its
    title: what a person checks before spending GPU time."""
    sections = [(f"Data report: {r.get('file_id')} with {r.get('model')}", _summary(r)),
                ("Which tokens carry loss (trained: bold green)", _loss_preview(r)),
                *_duplicates(r), *_leakage(r), *_findings(r), ("Estimate", _estimate(r))]
    parts: list[RenderableType] = []
    for title, table in sections:
        if table is not None:
            parts += [Text(title, style="bold"), table]
    return Group(*parts)


def _summary(r: dict[str, Any]) -> Table:
    table = _table("", "")
    table.show_header = False
    tokens, lengths = r.get("tokens") or {}, r.get("lengths") or {}
    truncation = r.get("truncation") or {}
    cut = truncation.get("rows") or 0
    table.add_row("rows", f"{r.get('rows', 0):,}")
    table.add_row("tokens trained", f"{tokens.get('trained', 0):,}")
    table.add_row("tokens untrained", f"{tokens.get('untrained', 0):,}")
    table.add_row("tokens total", f"{tokens.get('total', 0):,}")
    if lengths:
        table.add_row("row length (tokens)",
                      f"min {lengths.get('min')}  p50 {lengths.get('p50')}  "
                      f"p90 {lengths.get('p90')}  p99 {lengths.get('p99')}  "
                      f"max {lengths.get('max')}")
    table.add_row(f"truncated at {r.get('max_seq_length')} tokens",
                  Text(f"{cut} rows" + (f" (lines {_lines(truncation.get('lines'))})"
                                        if cut else ""), style="yellow" if cut else ""))
    return table


def _loss_preview(r: dict[str, Any]) -> Table | None:
    previews = r.get("loss_preview") or []
    if not previews:
        return None
    table = _table("line", "rendered row")
    for p in previews[:1]:
        text = Text()
        for seg in p.get("segments") or []:
            trained = seg.get("trained")
            text.append(seg.get("text", ""), style="bold green underline" if trained else "dim")
        table.add_row(str(p.get("line")), text)
    return table


Section = list[tuple[str, Table]]
"""A titled table, or none when there is nothing to show."""


def _duplicates(r: dict[str, Any]) -> Section:
    dup = r.get("duplicates") or {}
    exact, near = dup.get("exact") or [], dup.get("near") or []
    if not exact and not near:
        return []
    table = _table("kind", "lines", "similarity")
    for group in exact:
        table.add_row("exact", _lines(group.get("lines")), "1.00")
    for group in near:
        table.add_row("near", _lines(group.get("lines")), f"{group.get('similarity', 0):.2f}")
    return [(f"Duplicates: {len(exact)} exact, {len(near)} near", table)]


def _leakage(r: dict[str, Any]) -> Section:
    validation = r.get("validation")
    if not validation:
        return []
    leaked = validation.get("leaked") or []
    table = _table("validation line", "training lines", "kind")
    for row in leaked:
        table.add_row(str(row.get("line")), _lines(row.get("training_lines")),
                      _text(row.get("kind")))
    return [(f"Validation file {validation.get('file_id')}: {validation.get('rows')} rows, "
             f"{len(leaked)} also in the training file", table)]


def _findings(r: dict[str, Any]) -> Section:
    findings = r.get("findings") or []
    if not findings:
        return []
    table = _table("line", "kind", "excerpt (masked)")
    for f in findings:
        table.add_row(str(f.get("line")), _text(f.get("kind"), "red"),
                      _text(f.get("excerpt")))
    return [(f"Possible personal data or secrets: {len(findings)}", table)]


def _estimate(r: dict[str, Any]) -> Table | None:
    e = r.get("estimate") or {}
    if not e:
        return None
    table = _table("", "")
    table.show_header = False
    if e.get("basis") != "measured":
        table.add_row("duration", "unknown: no earlier job on this base model to measure from")
        return table
    table.add_row("measured on", f"{e.get('jobs_measured')} earlier jobs, "
                                 f"{e.get('tokens_per_second', 0):,.1f} tokens/s")
    table.add_row("training tokens", f"{e.get('tokens', 0):,} ({e.get('epochs')} epochs)")
    table.add_row("duration", clock(e.get("seconds")))
    table.add_row("GPU-hours", f"{e.get('gpu_hours', 0):.3f} ({e.get('gpus', 0)} GPUs)")
    table.add_row("worker-hours", f"{e.get('worker_hours', 0):.3f}")
    return table


def _lines(lines: Iterable[int] | None, most: int = 20) -> str:
    """Line numbers, the first ``most`` of them.

    >>> _lines([3, 17]), _lines(range(1, 30), most=3)
    ('3, 17', '1, 2, 3 and 26 more')
    """
    lines = list(lines or [])
    shown = ", ".join(str(n) for n in lines[:most])
    return shown + (f" and {len(lines) - most} more" if len(lines) > most else "")
