"""``openft jobs follow``: a job's live events as a progress bar, until the job settles.

On a terminal: a rich progress bar (step of total, ETA, train and validation loss) with the
message events printed above it. Elsewhere (a pipe, a CI log): one line per metrics event. With
``--json``: every event object, then the settled job, one per line.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, TextColumn
from rich.progress import Progress as Bar
from rich.table import Table

from service.cli import progress, render
from service.cli.events import End, job_events
from service.cli.state import Cli, emit

SETTLED_OK = "succeeded"


class View(Protocol):
    def __enter__(self) -> View: ...
    def __exit__(self, *exc: object) -> None: ...
    def event(self, event: dict[str, Any], now: progress.Progress) -> None: ...


class BarView:
    """A live bar on a terminal; messages scroll above it."""

    def __init__(self, console: Console, job_id: str) -> None:
        self._bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(),
                        TextColumn("{task.fields[step]}"), TextColumn("ETA {task.fields[eta]}"),
                        TextColumn("{task.fields[losses]}"), console=console)
        self._task = self._bar.add_task(job_id, total=None, **self._fields(progress.Progress()))

    def __enter__(self) -> BarView:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def event(self, event: dict[str, Any], now: progress.Progress) -> None:
        if event.get("type") == "metrics":
            self._bar.update(self._task, completed=now.step, total=now.total_steps,
                             **self._fields(now))
        else:
            self._bar.console.print(render.event_line(event))

    @staticmethod
    def _fields(p: progress.Progress) -> dict[str, str]:
        return {"step": progress.step_text(p), "eta": progress.clock(p.eta_seconds),
                "losses": progress.losses_text(p)}


class LogView:
    """No terminal: plain lines, one per event."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def __enter__(self) -> LogView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def event(self, event: dict[str, Any], now: progress.Progress) -> None:
        if event.get("type") == "metrics":
            self._console.print(progress.line(now), markup=False, highlight=False)
        else:
            self._console.print(render.event_line(event))


class JsonView(LogView):
    def event(self, event: dict[str, Any], now: progress.Progress) -> None:
        emit(event)


def view_for(cli: Cli, job_id: str) -> View:
    if cli.json:
        return JsonView(cli.out)
    if cli.out.is_terminal:
        return BarView(cli.out, job_id)
    return LogView(cli.out)


def follow(cli: Cli, job_id: str, reconnects: int = 5) -> int:
    """Shows the job's events until it settles, then its outcome; the exit code: 0 if it
    succeeded, 1 if it failed (its error on stderr) or was cancelled."""
    now = progress.Progress()
    with view_for(cli, job_id) as view:
        opened = partial(cli.api.job_event_lines, job_id)
        for item in job_events(opened, job_id, reconnects=reconnects):
            if isinstance(item, End):
                break
            now = progress.advance(now, item)
            view.event(item, now)
    job = cli.api.sdk.fine_tuning.jobs.retrieve(job_id).to_dict(mode="json")
    cli.show(job, outcome(job))
    if job.get("status") == SETTLED_OK:
        return 0
    error = job.get("error") or {}
    cli.err.print(f"job {job_id} {job.get('status')}"
                  + (f": {render.error_text(error)}" if error.get("message") else ""),
                  markup=False, highlight=False)
    return 1


def outcome(job: dict[str, Any]) -> Table:
    """The settled job: status, model, best checkpoint (the rest is ``openft jobs get``)."""
    rows: list[tuple[str, Any]] = [("status", render.status(job.get("status"))),
                                   ("fine-tuned model", job.get("fine_tuned_model"))]
    best = job.get("best_checkpoint")
    if best:
        rows.append(("best checkpoint", render.best_checkpoint_text(best)))
    if job.get("trained_tokens"):
        rows.append(("trained tokens", f"{job['trained_tokens']:,}"))
    return render.fields_table(rows)
