"""Just enough of a Dockerfile reader for tests to compare images with what the chart and the
topology test run: the ENV a container starts with, its command, its user, its stages.

It reads the instructions the repository's Dockerfiles use (``ARG``, ``FROM``, ``ENV``,
``USER``, ``COPY``, ``RUN``, ``CMD``, ``ENTRYPOINT``, ...), with ``\\`` line continuations and
``${VAR}``/``$VAR`` expanded from the ``ARG`` defaults and earlier ``ENV`` values; no heredocs.

>>> text = '''ARG BASE=python:3.11.14-slim
... FROM ${BASE} AS deps
... ENV A=1
... FROM ${BASE}
... ENV PATH=/opt/venv/bin:$PATH B="two words" \\\\
...     C=3
... COPY --from=deps /opt/venv /opt/venv
... USER 10001
... CMD ["uvicorn", "--factory", "service.main:create_app"]
... '''
>>> [(s.name, s.image) for s in parse(text)]
[('deps', 'python:3.11.14-slim'), (None, 'python:3.11.14-slim')]
>>> final = parse(text)[-1]
>>> final.env
{'PATH': '/opt/venv/bin:$PATH', 'B': 'two words', 'C': '3'}
>>> final.user, final.cmd
('10001', ['uvicorn', '--factory', 'service.main:create_app'])
>>> final.copies
[Copy(sources=['/opt/venv'], dest='/opt/venv', from_stage='deps', line=7)]
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass
class Instruction:
    keyword: str
    """Upper-cased: ``FROM``, ``RUN``, ..."""
    args: str
    line: int
    """1-based line where the instruction starts."""


@dataclass
class Copy:
    sources: list[str]
    dest: str
    from_stage: str | None
    line: int


@dataclass
class Stage:
    image: str
    """The base image, ARG defaults expanded."""
    name: str | None
    line: int
    env: dict[str, str] = field(default_factory=dict)
    """This stage's own ``ENV`` lines (a stage built ``FROM`` another inherits its ENV
    too; :func:`image_env` is the final image's whole set). ``$PATH`` and the like stay as
    written where the variable is not an ARG or an earlier ENV of the stage."""
    user: str | None = None
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    copies: list[Copy] = field(default_factory=list)
    runs: list[Instruction] = field(default_factory=list)
    instructions: list[Instruction] = field(default_factory=list)


def instructions(text: str) -> list[Instruction]:
    """The instructions of ``text``: comments dropped, continuation lines joined."""
    found: list[Instruction] = []
    pending, start = "", 0
    for n, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = n
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        found.append(Instruction(keyword.upper(), args.strip(), start))
        pending = ""
    return found


def _expand(value: str, variables: dict[str, str]) -> str:
    return _VAR.sub(lambda m: variables.get(m[1] or m[2], m[0]), value)


def _env_pairs(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if words and "=" not in words[0]:  # legacy `ENV KEY value`
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"not an exec-form command: {args}")
    return value


def _copy(args: str, line: int) -> Copy:
    words = shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
    return Copy(paths[:-1], paths[-1], stage, line)


def parse(text: str) -> list[Stage]:
    """The stages of a Dockerfile, in order (the last one is the image)."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions(text):
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            # Global ARGs (before the first FROM) name base images; a stage's own ARGs
            # (build arguments such as a version label) are not its environment.
            if not stages:
                args[name] = default
            continue
        if ins.keyword == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(_expand(words[0], args), name, ins.line))
            continue
        if not stages:
            raise ValueError(f"line {ins.line}: {ins.keyword} before FROM")
        stage = stages[-1]
        stage.instructions.append(ins)
        if ins.keyword == "ENV":
            for key, value in _env_pairs(ins.args).items():
                stage.env[key] = _expand(value, {**args, **stage.env})
        elif ins.keyword == "USER":
            stage.user = ins.args.strip()
        elif ins.keyword == "CMD":
            stage.cmd = _exec_form(ins.args)
        elif ins.keyword == "ENTRYPOINT":
            stage.entrypoint = _exec_form(ins.args)
        elif ins.keyword in ("COPY", "ADD"):
            stage.copies.append(_copy(ins.args, ins.line))
        elif ins.keyword == "RUN":
            stage.runs.append(ins)
    if not stages:
        raise ValueError("no FROM")
    return stages


def stages(path: Path) -> list[Stage]:
    return parse(Path(path).read_text())


def _lineage(all_stages: list[Stage]) -> list[Stage]:
    """The final stage and the stages it is built ``FROM``, base first."""
    by_name = {s.name: s for s in all_stages if s.name}
    chain = [all_stages[-1]]
    while chain[0].image in by_name:
        chain.insert(0, by_name[chain[0].image])
    return chain


def image_env(path: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the image's ENV lines give its containers.

    A value that builds on the base image's own environment (``PATH=/opt/venv/bin:$PATH``)
    is expanded from ``base`` when it has the variable, and left out otherwise: a process
    run here keeps its own ``PATH``, which names this machine's interpreter.
    """
    env: dict[str, str] = {}
    for stage in _lineage(stages(path)):
        env.update(stage.env)
    out = {}
    for key, value in env.items():
        expanded = _expand(value, dict(base or {}))
        if not _VAR.search(expanded):
            out[key] = expanded
    return out


def entrypoint(path: Path) -> list[str]:
    """What a container of the image runs: ENTRYPOINT then CMD (exec forms)."""
    chain = _lineage(stages(path))
    ep = next((s.entrypoint for s in reversed(chain) if s.entrypoint is not None), None)
    cmd = next((s.cmd for s in reversed(chain) if s.cmd is not None), None)
    return [*(ep or []), *(cmd or [])]


def user(path: Path) -> str | None:
    """The image's final ``USER`` (``None``: root)."""
    return next((s.user for s in reversed(_lineage(stages(path))) if s.user), None)
