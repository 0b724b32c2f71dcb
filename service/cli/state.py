"""What every command gets: the server connection, the consoles, the ``--json`` switch."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any

import click
import typer
from rich.console import Console, RenderableType

from service.cli.client import Api, Config

JsonFlag = Annotated[bool, typer.Option(
    "--json", help="Print the API's JSON objects, one per line, for scripts (no tables, "
                   "colors or bars).")]


@dataclass(frozen=True)
class Transport:
    """How to reach the server when not over the network with the SDK's retries: tests hand
    one in as the click context's ``obj`` (``CliRunner().invoke(app, args, obj=...)``)."""

    http_client: Any = None
    max_retries: int = 2


@dataclass
class Cli:
    config: Config
    json: bool = False
    # emoji off: model names hold ``:``, and ``ft:m:x`` must not print as ``ftⓂx``
    out: Console = field(default_factory=lambda: Console(emoji=False))
    err: Console = field(default_factory=lambda: Console(stderr=True, emoji=False))
    _api: Api | None = None

    @classmethod
    def of(cls, ctx: typer.Context, as_json: bool = False) -> Cli:
        """The root command's state; a command's own ``--json`` turns JSON on too."""
        cli = ctx.find_object(cls)
        if cli is None:  # a sub-app invoked on its own (not through ``openft``)
            raise click.UsageError("run this command through `openft`")
        cli.json = cli.json or as_json
        return cli

    @property
    def api(self) -> Api:
        """Connected on first use, so ``--help`` and usage errors need no key."""
        if self._api is None:
            self._api = Api(self.config)
        return self._api

    def show(self, obj: Any, human: RenderableType) -> None:
        """``obj`` as one line of JSON with ``--json``, else ``human`` for a person."""
        if self.json:
            emit(obj)
        else:
            self.out.print(human)


def emit(obj: Any) -> None:
    """One API object as one line of JSON on stdout."""
    click.echo(json.dumps(plain(obj), separators=(",", ":")))


def plain(obj: Any) -> Any:
    """An SDK object (extension fields included) or a list of them as plain JSON values."""
    if isinstance(obj, list):
        return [plain(o) for o in obj]
    if hasattr(obj, "to_dict"):
        return obj.to_dict(mode="json")
    return obj


def page_object(items: list[Any], has_more: bool) -> dict[str, Any]:
    """A list as the API's list object."""
    return {"object": "list", "data": plain(items), "has_more": has_more}
