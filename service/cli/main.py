"""``openft``: the console script (``[project.scripts]`` in pyproject.toml).

It speaks only HTTP to an openft server, configured as the ``openai`` SDK is
(``OPENAI_BASE_URL``, ``OPENAI_API_KEY``), and imports nothing else of the project.
Exit codes: 0 done; 1 the API refused, the server could not be reached, or a followed job
failed or was cancelled; 2 bad usage.
"""

from __future__ import annotations

from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from service.cli import chat, files, jobs, models
from service.cli.client import DEFAULT_BASE_URL, CliError, Config, translated
from service.cli.state import Cli, JsonFlag, Transport


class ErrorsAsMessages(TyperGroup):
    """Expected failures end with one line on stderr and exit code 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:
            cli = ctx.find_object(Cli)
            error = e if isinstance(e, CliError) else translated(
                e, cli.config.base_url if cli else "the server")
            if error is None:
                raise
            err = cli.err if cli else Console(stderr=True)
            err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
            raise typer.Exit(1) from None


app = typer.Typer(name="openft", cls=ErrorsAsMessages, no_args_is_help=True,
                  pretty_exceptions_show_locals=False,  # locals hold the API key
                  help="Fine-tune, watch and use models on an openft server.")
app.add_typer(files.app, name="files")
app.add_typer(jobs.app, name="jobs")
app.add_typer(models.app, name="models")
app.command("chat")(chat.chat)


@app.callback()
def root(ctx: typer.Context,
         base_url: Annotated[str, typer.Option(
             envvar="OPENAI_BASE_URL", help="The server's API root.")] = DEFAULT_BASE_URL,
         api_key: Annotated[str | None, typer.Option(
             envvar="OPENAI_API_KEY", show_default=False,
             help="Your API key (`make run` writes one to .openft/api_key).")] = None,
         as_json: JsonFlag = False) -> None:
    transport = ctx.obj if isinstance(ctx.obj, Transport) else Transport()
    ctx.obj = Cli(Config(base_url, api_key, transport.http_client, transport.max_retries),
                  json=as_json)
