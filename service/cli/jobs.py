"""``openft jobs``: create (and follow), list, get, cancel, pause, resume, events, checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from service.cli import follow as following
from service.cli import render
from service.cli.state import Cli, JsonFlag, emit, page_object

if TYPE_CHECKING:  # the SDK loads its fine-tuning modules only when a command needs them
    from openai.resources.fine_tuning import Jobs
    from openai.types.fine_tuning import FineTuningJob

app = typer.Typer(help="Fine-tuning jobs: create, watch live, control.", no_args_is_help=True)

JobId = Annotated[str, typer.Argument(help="A fine-tuning job id (ftjob-...).")]


class Method(StrEnum):
    supervised = "supervised"
    dpo = "dpo"


@app.command()
def create(ctx: typer.Context,
           model: Annotated[str, typer.Option(help="Base model, or a fine-tuned model or "
                                                   "checkpoint to continue from.")],
           training_file: Annotated[str, typer.Option(help="Training file id.")],
           validation_file: Annotated[str | None, typer.Option(help="Validation file id.")] = None,
           suffix: Annotated[str | None, typer.Option(help="Part of the model's name.")] = None,
           epochs: Annotated[int | None, typer.Option(help="n_epochs.")] = None,
           learning_rate_multiplier: Annotated[float | None, typer.Option()] = None,
           batch_size: Annotated[int | None, typer.Option()] = None,
           beta: Annotated[float | None, typer.Option(help="DPO's beta.")] = None,
           method: Annotated[Method, typer.Option(help="Training method.")] = Method.supervised,
           seed: Annotated[int | None, typer.Option()] = None,
           fail_on_leakage: Annotated[bool, typer.Option(
               "--fail-on-leakage", help="Fail at validation if validation rows also appear "
                                         "in the training file.")] = False,
           fail_on_secrets: Annotated[bool, typer.Option(
               "--fail-on-secrets", help="Fail at validation if the data holds likely "
                                         "personal data or secrets.")] = False,
           follow: Annotated[bool, typer.Option(
               "--follow", help="Then show its progress live until it settles; the exit code "
                                "says whether it succeeded.")] = False,
           as_json: JsonFlag = False) -> None:
    """Create a fine-tuning job."""
    cli = Cli.of(ctx, as_json)
    hyper = {k: v for k, v in (("n_epochs", epochs), ("batch_size", batch_size),
                               ("learning_rate_multiplier", learning_rate_multiplier),
                               ("beta", beta)) if v is not None}
    checks = {k: True for k, on in (("fail_on_leakage", fail_on_leakage),
                                    ("fail_on_secrets", fail_on_secrets)) if on}
    optional: dict[str, Any] = {k: v for k, v in (("validation_file", validation_file),
                                                  ("suffix", suffix), ("seed", seed))
                                if v is not None}
    job = cli.api.sdk.fine_tuning.jobs.create(
        model=model, training_file=training_file,
        method={"type": method.value, method.value: {"hyperparameters": hyper}},  # type: ignore[misc]
        extra_body={"data_checks": checks} if checks else None, **optional)
    cli.show(job, f"Created [bold]{escape(job.id)}[/] ({job.status})")
    if follow:
        raise typer.Exit(following.follow(cli, job.id))


@app.command("follow")
def follow_(ctx: typer.Context, job_id: JobId, as_json: JsonFlag = False) -> None:
    """Show a job's progress live (step, ETA, losses) and its events until it settles.
    Exit code 0 if it succeeded, 1 if it failed or was cancelled."""
    cli = Cli.of(ctx, as_json)
    raise typer.Exit(following.follow(cli, job_id))


@app.command("list")
def list_(ctx: typer.Context,
          limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 20,
          as_json: JsonFlag = False) -> None:
    """List your fine-tuning jobs."""
    cli = Cli.of(ctx, as_json)
    page = cli.api.sdk.fine_tuning.jobs.list(limit=limit)
    cli.show(page_object(page.data, page.has_more),
             render.jobs_table(j.to_dict() for j in page.data))


@app.command()
def get(ctx: typer.Context, job_id: JobId, as_json: JsonFlag = False) -> None:
    """Show one job: status, hyperparameters, model, best checkpoint, error."""
    _show_job(ctx, as_json, lambda jobs: jobs.retrieve(job_id))


@app.command()
def cancel(ctx: typer.Context, job_id: JobId, as_json: JsonFlag = False) -> None:
    """Cancel a job."""
    _show_job(ctx, as_json, lambda jobs: jobs.cancel(job_id))


@app.command()
def pause(ctx: typer.Context, job_id: JobId, as_json: JsonFlag = False) -> None:
    """Pause a running job at its current step (resume continues from there)."""
    _show_job(ctx, as_json, lambda jobs: jobs.pause(job_id))


@app.command()
def resume(ctx: typer.Context, job_id: JobId, as_json: JsonFlag = False) -> None:
    """Resume a paused job."""
    _show_job(ctx, as_json, lambda jobs: jobs.resume(job_id))


def _show_job(ctx: typer.Context, as_json: bool,
              call: Callable[[Jobs], FineTuningJob]) -> None:
    """Shows the job that ``call`` on the SDK's jobs resource answers."""
    cli = Cli.of(ctx, as_json)
    job = call(cli.api.sdk.fine_tuning.jobs)
    cli.show(job, render.job_details(job.to_dict(mode="json")))


@app.command()
def events(ctx: typer.Context, job_id: JobId,
           limit: Annotated[int, typer.Option(min=1, help="The latest this many.")] = 50,
           as_json: JsonFlag = False) -> None:
    """List a job's latest events, oldest first (`follow` shows them live)."""
    cli = Cli.of(ctx, as_json)
    page = cli.api.sdk.fine_tuning.jobs.list_events(job_id, limit=limit)
    cli.show(page_object(page.data, page.has_more),
             render.events_table(e.to_dict() for e in reversed(page.data)))


@app.command()
def checkpoints(ctx: typer.Context, job_id: JobId,
                as_json: JsonFlag = False) -> None:
    """List a job's checkpoints with their losses; the best one is starred."""
    cli = Cli.of(ctx, as_json)
    page = cli.api.sdk.fine_tuning.jobs.checkpoints.list(job_id, limit=100)
    if cli.json:
        emit(page_object(page.data, page.has_more))
        return
    job = cli.api.sdk.fine_tuning.jobs.retrieve(job_id).to_dict(mode="json")
    best = (job.get("best_checkpoint") or {}).get("id")
    cli.out.print(render.checkpoints_table((c.to_dict() for c in page.data), best))
