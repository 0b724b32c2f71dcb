"""The quality suite end to end: base model, each arm's fine-tune and TRL, per task::

    .venv/bin/python -m bench.quality.run                    # starts the stack on a temp dir
    .venv/bin/python -m bench.quality.run --arm auto={} --arm 'old={"n_epochs": 3}'
    .venv/bin/python -m bench.quality.run --base-url http://127.0.0.1:8000/v1 --api-key sk-...

For each task (``bench/quality/tasks``), through the official ``openai`` SDK as a user would:
upload the training rows, and for each arm create a job with the task's method, the arm's
hyperparameters and a fixed seed, one job at a time; score the base model once and each
fine-tuned model on the held-out items at temperature 0. Then, with the stack stopped, TRL
trains and answers the same rows in a child process (``bench/quality/trl_peer.py``). The
table goes to stdout and to ``<results-dir>/quality.md``, every answer to ``quality.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from openai import OpenAI

from bench.environment import REPO, code_version, machine, versions
from bench.json_extraction import own_stack
from bench.quality import jobs, local_model, score, trl_peer
from bench.quality.report import BASE, TRL, Cell, render
from bench.quality.tasks import TASKS, TaskData
from bench.quality.tasks.base import DEFAULT_HELDOUT, DEFAULT_TRAIN

DEFAULT_BASE_MODEL = "SmolLM2-135M-Instruct"
RESULTS_DIR = REPO / "bench" / "results"
DEFAULT_TASKS = tuple(name for name in TASKS if name != "tool_call")
"""``tool_call`` needs a template that renders tools; SmolLM2's does not (tasks README)."""


def add_item_arguments(p: argparse.ArgumentParser) -> None:
    """What decides the rows and how they are asked: the same flags and defaults for every
    tool that scores the suite (this runner, ``few_shot``), so their numbers compare."""
    p.add_argument("--n-train", type=int, default=DEFAULT_TRAIN)
    p.add_argument("--n-heldout", type=int, default=DEFAULT_HELDOUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--base-model", default=DEFAULT_BASE_MODEL)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                   help=f"comma-separated, of {', '.join(TASKS)} (default: all but tool_call)")
    add_item_arguments(p)
    p.add_argument("--arm", action="append", type=_arm, dest="arms", metavar="NAME=JSON",
                   help="hyperparameters of one arm, repeatable (default: auto={}); keys named "
                        "after a method or task nest values for it only")
    p.add_argument("--no-trl", action="store_true", help="leave the TRL peer out")
    p.add_argument("--no-base", action="store_true",
                   help="leave the base model's column out (a sweep comparing arms)")
    p.add_argument("--base-model-dir", type=Path,
                   help="the base model's folder for TRL (default: from OPENFT_BASE_MODELS, "
                        "else the stack's converted copy)")
    p.add_argument("--base-url", help="an already running openft (default: start one)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    p.add_argument("--data-dir", type=Path,
                   help="data dir of the stack this starts (kept); default: a temp dir, removed")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--concurrency", type=int, default=4, help="held-out requests in flight")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                   help="torch threads of the TRL peer")
    p.add_argument("--job-timeout", type=float, default=3600, help="seconds per job")
    args = p.parse_args(argv)
    args.arms = args.arms or [jobs.Arm("auto", {})]
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown tasks {unknown}; known: {', '.join(TASKS)}")
    names = [a.name for a in args.arms]
    if len(set(names)) != len(names):
        p.error(f"arm names repeat: {names}")
    return args


def _arm(text: str) -> jobs.Arm:
    try:
        return jobs.parse_arm(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def base_model_dir(args: argparse.Namespace, data_dir: Path | None) -> Path:
    """The folder the stack serves the base model from, for TRL to train on the same one."""
    if args.base_model_dir:
        return Path(args.base_model_dir)
    configured = json.loads(os.environ.get("OPENFT_BASE_MODELS") or "{}")
    entry = configured.get(args.base_model)
    if isinstance(entry, str):
        return Path(entry)
    if isinstance(entry, dict) and entry.get("volume_path"):
        return Path(entry["volume_path"])
    # Where the launcher converts the default model: <data dir>/models/ (`make run`: .openft).
    return (data_dir or REPO / ".openft") / "models" / args.base_model


def run_api(client: OpenAI, args: argparse.Namespace, data: dict[str, TaskData],
            cells: dict[str, dict[str, Cell]], record: dict[str, Any], work: Path) -> None:
    """The base model and every arm on every task, through the API; a full fine-tune is
    downloaded into ``work`` (the run's scratch folder) and removed once answered."""
    for name, task_data in data.items():
        task, items = TASKS[name], task_data.heldout
        record[name] = {}
        if args.no_base:
            cells[name][BASE] = Cell(None, None, note="skipped: --no-base")
        else:
            print(f"{name}: scoring base model {args.base_model}", flush=True)
            answers = score.ask(client, args.base_model, items, args.max_tokens,
                                args.concurrency)
            cells[name][BASE] = score.scored(task, items, answers)
            record[name][BASE] = {"answers": score.answers_record(items, answers, task)}
        file_id = jobs.upload(client, name, task_data)
        settled: dict[str, dict[str, Any]] = {}
        """The resolved ``method`` of each arm trained on this task, by arm."""
        for arm in args.arms:
            values = jobs.hyperparameters(arm, task.method, name)
            print(f"{name}: arm {arm.name} {json.dumps(values)}", flush=True)
            job_id = jobs.create(client, model=args.base_model, file_id=file_id,
                                 method=task.method, values=values, seed=args.seed,
                                 suffix=f"q-{name.replace('_', '-')}-{arm.name}"[:64])
            method = jobs.resolved_method(client, job_id, args.job_timeout)
            twin = jobs.same_settings(method, settled)
            if twin is not None:
                # The same file, seed and settings train the same model: score that one once.
                client.fine_tuning.jobs.cancel(job_id)
                cells[name][arm.name] = replace(cells[name][twin], same_as=twin)
                record[name][arm.name] = {"job": {"job_id": job_id, "status": "cancelled",
                                                  "method": method}, "same_as": twin}
                print(f"  {arm.name}: resolved as {twin} did; {twin}'s model stands for it",
                      flush=True)
                continue
            trained = jobs.settle(client, job_id, args.job_timeout)
            record[name][arm.name] = {"job": trained.__dict__}
            if trained.status != "succeeded" or not trained.fine_tuned_model:
                cells[name][arm.name] = Cell(None, None, note=f"failed: job {trained.job_id} "
                                             f"{trained.status}: {trained.error}")
                continue
            settled[arm.name] = method or {}
            note = ""
            if jobs.full_finetune(method):
                scratch = work / f"{name}-{arm.name}"
                try:
                    folder = local_model.download(client, trained.fine_tuned_model, scratch)
                    answers = local_model.answers(folder, items, max_tokens=args.max_tokens,
                                                  threads=args.threads,
                                                  work=scratch / "answers",
                                                  timeout=args.job_timeout)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
                note = local_model.NOTE
            else:
                answers = score.ask(client, trained.fine_tuned_model, items, args.max_tokens,
                                    args.concurrency)
            cells[name][arm.name] = replace(
                score.scored(task, items, answers, trained.trained_tokens, trained.seconds),
                note=note)
            record[name][arm.name]["answers"] = score.answers_record(items, answers, task)
            print(f"  {arm.name}: {cells[name][arm.name]}", flush=True)


def run_trl(args: argparse.Namespace, data: dict[str, TaskData], model_dir: Path,
            work: Path, cells: dict[str, dict[str, Cell]], record: dict[str, Any]) -> None:
    """The TRL peer on every task, or a ``skipped`` cell saying why it could not run."""
    reason = trl_peer.missing() or (None if (model_dir / "config.json").exists()
                                    else f"skipped: no model folder at {model_dir}")
    if reason:
        print(f"TRL peer {reason}", flush=True)
    for name, task_data in data.items():
        if reason:
            cells[name][TRL] = Cell(None, None, note=reason)
            continue
        print(f"{name}: TRL peer", flush=True)
        try:
            peer = trl_peer.run_peer(task_data, model_dir, seed=args.seed,
                                     max_tokens=args.max_tokens, threads=args.threads,
                                     work=work / f"trl-{name}", timeout=args.job_timeout)
        except RuntimeError as e:
            print(f"  {e}", flush=True)
            cells[name][TRL] = Cell(None, None, note=f"failed: {str(e).splitlines()[0]}")
            continue
        task, items = TASKS[name], task_data.heldout
        cells[name][TRL] = score.scored(task, items, peer.answers, peer.tokens, peer.seconds)
        record[name][TRL] = {"settings": peer.settings,
                             "answers": score.answers_record(items, peer.answers, task)}
        print(f"  trl: {cells[name][TRL]}", flush=True)


def resolved(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each job's hyperparameters as the server resolved them (``auto`` filled in), by task
    and arm: what an arm that reproduces a rule must match."""
    found: dict[str, dict[str, Any]] = {}
    for task, by_arm in record.items():
        for arm, seen in by_arm.items():
            method = (seen.get("job") or {}).get("method") or {}
            section = method.get(method.get("type") or "") or {}
            if section.get("hyperparameters"):
                found.setdefault(task, {})[arm] = section["hyperparameters"]
    return found


def trl_settings(record: dict[str, Any]) -> dict[str, Any]:
    """What TRL's defaults resolved to, by trainer (one SFT, one DPO setting at most)."""
    return {seen[TRL]["settings"]["trainer"]: seen[TRL]["settings"]
            for seen in record.values() if TRL in seen}


def redacted(argv: Sequence[str]) -> list[str]:
    """``argv`` as the report prints it: the value of ``--api-key`` replaced, since reports
    are committed.

    >>> redacted(["--api-key", "sk-1", "--tasks", "classify", "--api-key=sk-2"])
    ['--api-key', '***', '--tasks', 'classify', '--api-key=***']
    """
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--api-key":
            arg = "***"
        elif arg.startswith("--api-key="):
            arg = "--api-key=***"
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    code = code_version()  # the code the run began on: a sweep outlives edits to the tree
    data = {name: TASKS[name].make(args.seed, args.n_train, args.n_heldout)
            for name in args.tasks}
    cells: dict[str, dict[str, Cell]] = {name: {} for name in args.tasks}
    record: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="openft-quality-"))
    # Own stack: a data dir kept until TRL has read the converted base model from it.
    data_dir = None if args.base_url else (args.data_dir or work / "stack")
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
    try:
        if args.base_url:
            if not args.api_key:
                raise SystemExit("--api-key (or OPENAI_API_KEY) is needed with --base-url")
            run_api(OpenAI(base_url=args.base_url, api_key=args.api_key), args, data, cells,
                    record, work)
        else:
            with own_stack(data_dir) as (base_url, api_key):
                run_api(OpenAI(base_url=base_url, api_key=api_key), args, data, cells, record,
                        work)
        if args.no_trl:
            for name in args.tasks:
                cells[name][TRL] = Cell(None, None, note="skipped: --no-trl")
        else:  # after the stack stopped: TRL gets the machine to itself, as each job did
            run_trl(args, data, base_model_dir(args, data_dir), work, cells, record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    arms = [BASE, *(a.name for a in args.arms), TRL]
    trl_reason = next((c[TRL].note for c in cells.values() if c[TRL].note), None)
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": shlex.join(redacted(argv)),
        "machine": machine(), "code": code,
        "versions": versions("openai", "torch", "transformers", "peft", "trl", "vllm"),
        "settings": {"base_model": args.base_model, "tasks": args.tasks, "seed": args.seed,
                     "n_train": args.n_train, "n_heldout": args.n_heldout,
                     "max_tokens": args.max_tokens},
        "arms_described": {
            BASE: f"`{args.base_model}` as served, no fine-tune",
            **{a.name: jobs.described(a) for a in args.arms},
            TRL: trl_peer.described(trl_settings(record), trl_reason)},
        "resolved": resolved(record),
        "metrics": {name: f"{TASKS[name].metric} (well-formed: {TASKS[name].form})"
                    for name in args.tasks},
        "cells": {t: {a: c.__dict__ for a, c in by_arm.items()} for t, by_arm in cells.items()},
        "tasks": record,
        "total_seconds": round(time.monotonic() - started, 1),
    }
    text = render(result, cells, arms)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "quality.md").write_text(text)
    (args.results_dir / "quality.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
