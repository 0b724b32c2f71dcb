"""``openft files``: upload (with the data report), list, delete, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from service.cli import render
from service.cli.state import Cli, JsonFlag, page_object

app = typer.Typer(help="Upload training data and read its report before training.",
                  no_args_is_help=True)

ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Base model whose tokenizer and chat template the report uses "
                    "(default: the server's default base model).")]
ValidationOpt = Annotated[str | None, typer.Option(
    "--validation-file", help="A validation file id: the report lists its rows that also "
                              "appear in the training file.")]


@app.command()
def upload(ctx: typer.Context,
           file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                                help="A JSONL file.")],
           purpose: Annotated[str, typer.Option(help="The file's purpose.")] = "fine-tune",
           model: ModelOpt = None,
           validation_file: ValidationOpt = None,
           report: Annotated[bool, typer.Option(
               "--report/--no-report", help="Show the data report of a fine-tune file.")] = True,
           as_json: JsonFlag = False) -> None:
    """Upload FILE; for a fine-tune file, print its data report (tokens trained and not,
    truncation, duplicates, leakage, personal data and secrets, estimated duration)."""
    cli = Cli.of(ctx, as_json)
    with file.open("rb") as f:
        created = cli.api.sdk.files.create(file=(file.name, f), purpose=purpose)  # type: ignore[arg-type]
    cli.show(created, f"Uploaded {escape(file.name)} as [bold]{escape(created.id)}[/] "
                      f"({created.bytes:,} bytes)")
    if report and purpose == "fine-tune":
        _show_report(cli, created.id, model, validation_file)


@app.command("report")
def report_(ctx: typer.Context, file_id: str, model: ModelOpt = None,
            validation_file: ValidationOpt = None, as_json: JsonFlag = False) -> None:
    """Print the data report of an uploaded fine-tune file."""
    _show_report(Cli.of(ctx, as_json), file_id, model, validation_file)


def _show_report(cli: Cli, file_id: str, model: str | None, validation: str | None) -> None:
    report = cli.api.file_report(file_id, model, validation)
    cli.show(report, render.report(report))


@app.command("list")
def list_(ctx: typer.Context,
          purpose: Annotated[str | None, typer.Option(help="Only files of this purpose.")] = None,
          limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 20,
          as_json: JsonFlag = False) -> None:
    """List your files."""
    cli = Cli.of(ctx, as_json)
    page = cli.api.sdk.files.list(**({"purpose": purpose} if purpose else {}), limit=limit)
    cli.show(page_object(page.data, page.has_more),
             render.files_table(f.to_dict() for f in page.data))


@app.command()
def delete(ctx: typer.Context, file_id: str, as_json: JsonFlag = False) -> None:
    """Delete a file."""
    cli = Cli.of(ctx, as_json)
    deleted = cli.api.sdk.files.delete(file_id)
    cli.show(deleted, f"Deleted {escape(deleted.id)}")
