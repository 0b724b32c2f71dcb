"""``openft models``: list, delete, download (a fine-tuned model's adapter as ``.tar.gz``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TransferSpeedColumn,
)

from service.cli import render
from service.cli.state import Cli, JsonFlag, page_object

app = typer.Typer(help="Base and fine-tuned models: list, delete, download.",
                  no_args_is_help=True)

ModelArg = Annotated[str, typer.Argument(help="A model id (ft:...) or checkpoint name.")]


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the base models and your fine-tuned models."""
    cli = Cli.of(ctx, as_json)
    models = list(cli.api.sdk.models.list())
    cli.show(page_object(models, False), render.models_table(m.to_dict() for m in models))


@app.command()
def delete(ctx: typer.Context, model: ModelArg, as_json: JsonFlag = False) -> None:
    """Delete a fine-tuned model: it is no longer listed or served."""
    cli = Cli.of(ctx, as_json)
    deleted = cli.api.sdk.models.delete(model)
    cli.show(deleted, f"Deleted {escape(deleted.id)}")


@app.command()
def download(ctx: typer.Context, model: ModelArg,
             output: Annotated[Path | None, typer.Option(
                 "--output", "-o", help="A folder to put the archive in, or the archive's "
                                        "path (default: the current folder).")] = None,
             as_json: JsonFlag = False) -> None:
    """Download a fine-tuned model or checkpoint: its adapter, tokenizer, chat template and
    model card as a .tar.gz archive."""
    cli = Cli.of(ctx, as_json)
    bar = Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=cli.err,
                   disable=cli.json or not cli.err.is_terminal, transient=True)
    task = bar.add_task("download", total=None)
    with bar:
        path = cli.api.download_model(
            model, output, lambda done, total: bar.update(task, completed=done, total=total))
    size = path.stat().st_size
    cli.show({"model": model, "path": str(path), "bytes": size},
             f"Saved {escape(model)} to [bold]{escape(str(path))}[/] ({size:,} bytes)")
