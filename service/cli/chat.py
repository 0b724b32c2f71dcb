"""``openft chat MODEL``: talk to a base model, a fine-tuned model or a checkpoint.

One-shot with ``-m`` (the answer streamed to stdout), otherwise a small REPL that keeps the
conversation and streams each answer; Ctrl-D or ``/exit`` ends it, ``/reset`` forgets it.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from service.cli.state import Cli, JsonFlag, emit

EXIT, RESET = {"/exit", "/quit"}, "/reset"


def chat(ctx: typer.Context,
         model: Annotated[str, typer.Argument(help="A model id or checkpoint name.")],
         system: Annotated[str | None, typer.Option(help="A system message.")] = None,
         message: Annotated[str | None, typer.Option(
             "--message", "-m", help="Ask once, print the answer and exit.")] = None,
         max_tokens: Annotated[int | None, typer.Option(help="Longest answer.")] = None,
         temperature: Annotated[float | None, typer.Option()] = None,
         as_json: JsonFlag = False) -> None:
    """Chat with a model: one question with -m, else interactively."""
    cli = Cli.of(ctx, as_json)
    options = {k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature))
               if v is not None}
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    if message is not None:
        history.append({"role": "user", "content": message})
        answer(cli, model, history, options)
        return
    if cli.json:
        raise typer.BadParameter("--json needs -m (one question, one JSON answer)")
    repl(cli, model, history, options)


def repl(cli: Cli, model: str, history: list[dict[str, str]], options: dict[str, Any]) -> None:
    cli.out.print(f"Chatting with [bold]{escape(model)}[/]; /reset forgets, /exit or Ctrl-D ends.")
    start = len(history)
    while True:
        try:
            said = cli.out.input("[bold cyan]you>[/] ").strip()
        except EOFError:
            cli.out.print()
            return
        if said in EXIT:
            return
        if said == RESET:
            del history[start:]
            continue
        if said:
            history.append({"role": "user", "content": said})
            history.append({"role": "assistant", "content": answer(cli, model, history,
                                                                   options)})


def answer(cli: Cli, model: str, history: list[dict[str, str]], options: dict[str, Any]) -> str:
    """The model's answer to ``history``: streamed as it comes (one JSON completion with
    ``--json``)."""
    chat = cli.api.sdk.chat.completions
    if cli.json:
        completion = chat.create(model=model, messages=history, **options)  # type: ignore[arg-type]
        emit(completion)
        return completion.choices[0].message.content or ""
    parts = []
    for chunk in chat.create(model=model, messages=history, stream=True, **options):  # type: ignore[arg-type]
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            parts.append(delta)
            cli.out.print(delta, end="", markup=False, highlight=False, soft_wrap=True)
    cli.out.print()
    return "".join(parts)
