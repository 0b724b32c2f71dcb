"""The data report in a job's events at validation, and the checks a job may opt in to.

Validation scans the job's files once (:func:`service.files.report.build.scan_file`); this
turns what it found into one ``message`` event and, with ``data_checks``, into the error
that fails the job, naming the lines.
"""

from __future__ import annotations

from typing import Any

from service.files.report.build import FileScan
from service.files.report.protocol import Estimate

SHOWN_LINES = 10
"""Lines a message names; the event's data lists up to 100."""


def _lines(lines: list[int]) -> str:
    return ", ".join(map(str, lines[:SHOWN_LINES])) + (", ..." if len(lines) > SHOWN_LINES else "")


def summary(training: FileScan, validation: FileScan | None,
            estimate: Estimate) -> tuple[str, dict[str, Any]]:
    """The summary event's message and data."""
    exact = training.index.exact_groups()
    near = training.index.near
    finding_lines = sorted({f.line for f in training.findings})
    leaked = [leak.line for leak in validation.leaks] if validation else []
    data: dict[str, Any] = {
        "rows": training.rows,
        "trained_tokens": training.trained, "untrained_tokens": training.untrained,
        "exact_duplicate_groups": len(exact), "near_duplicate_pairs": len(near),
        "leaked_rows": len(leaked), "leaked_lines": leaked[:100],
        "findings": len(training.findings), "finding_lines": finding_lines[:100],
        "finding_kinds": sorted({f.kind for f in training.findings}),
        "truncated_rows": training.truncated, "max_seq_length": training.max_seq_length,
        "estimate": estimate.model_dump(),
    }
    parts = [
        f"Data report: {training.rows} rows, {training.trained} of "
        f"{training.trained + training.untrained} tokens trained",
        f"{len(exact)} exact and {len(near)} near duplicate(s)",
    ]
    if validation is not None:
        parts.append(f"{len(leaked)} validation row(s) also in the training file"
                     + (f" (lines {_lines(leaked)})" if leaked else ""))
    parts.append(f"{len(training.findings)} likely secret(s) or personal data"
                 + (f" (lines {_lines(finding_lines)})" if finding_lines else ""))
    parts.append(f"{training.truncated} row(s) over {training.max_seq_length} tokens")
    parts.append(_estimate_text(estimate))
    return "; ".join(parts), data


def _estimate_text(e: Estimate) -> str:
    if e.basis == "none":
        return "no earlier job of this base model to estimate the duration from"
    hours = (f"{e.gpu_hours} GPU-hours" if e.gpus else f"{e.worker_hours} worker-hours")
    return (f"estimated {e.seconds} s for {e.tokens} tokens at {e.tokens_per_second} tokens/s "
            f"measured on {e.jobs_measured} earlier job(s), {hours}")


def check_failure(checks: dict[str, Any] | None, files: dict[str, str],
                  scans: dict[str, FileScan]) -> dict[str, Any] | None:
    """The job's ``error`` when an opted-in check fails, else None.

    ``files`` and ``scans`` are keyed by ``training_file`` / ``validation_file``.
    """
    checks = checks or {}
    validation = scans.get("validation_file")
    if checks.get("fail_on_leakage") and validation is not None and validation.leaks:
        shown = "; ".join(
            f"line {leak.line} ({leak.kind}, training line(s) "
            f"{', '.join(map(str, leak.training_lines[:5]))})"
            for leak in validation.leaks[:SHOWN_LINES])
        return _error(f"Validation file {files['validation_file']} shares "
                      f"{len(validation.leaks)} row(s) with the training file: {shown}"
                      + ("; ..." if len(validation.leaks) > SHOWN_LINES else "")
                      + ". (data_checks.fail_on_leakage)", "validation_file")
    if checks.get("fail_on_secrets"):
        for param, name in (("training_file", "Training"), ("validation_file", "Validation")):
            scan = scans.get(param)
            if scan is None or not scan.findings:
                continue
            shown = "; ".join(f"line {f.line} ({f.kind} {f.excerpt})"
                              for f in scan.findings[:SHOWN_LINES])
            return _error(f"{name} file {files[param]} holds likely secrets or personal "
                          f"data: {shown}" + ("; ..." if len(scan.findings) > SHOWN_LINES
                                              else "")
                          + ". (data_checks.fail_on_secrets)", param)
    return None


def _error(message: str, param: str) -> dict[str, Any]:
    return {"code": "data_check_failed", "message": message, "param": param}
