"""Arms (named sets of hyperparameters) and the fine-tuning jobs that train them.

An arm is what a user would type into ``method.<type>.hyperparameters``; ``auto={}`` gives
nothing, so the deployment's own ``auto`` rule decides. To compare two rules on the same
deployment, one arm spells the other rule's values out. Those values may differ by method
(``beta`` exists for DPO only) or by task (a rule that reads the data size picks per task),
so an arm's JSON may nest them: flat keys apply everywhere, a key named after a method or a
task holds values for that method or task only, the task's winning over the method's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openai import OpenAI

from bench.json_extraction import wait_for_job
from bench.quality.tasks import Method, TaskData, to_jsonl

METHODS = ("supervised", "dpo")


@dataclass(frozen=True)
class Arm:
    name: str
    values: dict[str, Any]


def parse_arm(text: str) -> Arm:
    """``NAME=JSON`` from the command line.

    >>> parse_arm('auto={}')
    Arm(name='auto', values={})
    >>> parse_arm('old={"n_epochs": 3, "dpo": {"beta": 0.1}}').values["dpo"]
    {'beta': 0.1}
    """
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"an arm is NAME=JSON, got {text!r}")
    if name in ("base", "trl"):
        raise ValueError(f"arm name {name!r} is taken by the table's own column")
    try:
        values = json.loads(raw) if raw.strip() else {}
    except ValueError as e:
        raise ValueError(f"arm {name}: not JSON: {raw!r} ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"arm {name}: hyperparameters must be a JSON object, got {raw!r}")
    return Arm(name, values)


def hyperparameters(arm: Arm, method: Method, task: str) -> dict[str, Any]:
    """What ``arm`` sets for one task: flat keys, then the method's, then the task's.

    >>> arm = Arm("x", {"n_epochs": 3, "dpo": {"beta": 0.2}, "rewrite": {"n_epochs": 5}})
    >>> hyperparameters(arm, "dpo", "dpo_format"), hyperparameters(arm, "supervised", "rewrite")
    ({'n_epochs': 3, 'beta': 0.2}, {'n_epochs': 5})
    """
    flat = {k: v for k, v in arm.values.items() if not isinstance(v, Mapping)}
    return {**flat, **arm.values.get(method, {}), **arm.values.get(task, {})}


def job_method(method: Method, values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``method`` argument of ``jobs.create``; no section at all when nothing is set, as
    a user who leaves everything ``auto`` would send.

    >>> job_method("dpo", {"beta": 0.2})
    {'type': 'dpo', 'dpo': {'hyperparameters': {'beta': 0.2}}}
    >>> job_method("supervised", {})
    {'type': 'supervised'}
    """
    if not values:
        return {"type": method}
    return {"type": method, method: {"hyperparameters": dict(values)}}


def described(arm: Arm) -> str:
    """An arm in the report's words."""
    return f"`{json.dumps(arm.values)}`" if arm.values else \
        "no hyperparameters given (the deployment's `auto` rule)"


@dataclass(frozen=True)
class Trained:
    """A settled job: its model when it succeeded, or the reason it did not."""

    job_id: str
    status: str
    fine_tuned_model: str | None
    trained_tokens: int | None
    seconds: float | None
    """Server timestamps, ``created_at`` to ``finished_at``."""
    method: dict[str, Any] | None
    """The job's ``method`` as echoed: every value resolved, ``auto`` included."""
    error: str | None = None


def upload(client: OpenAI, task: str, data: TaskData) -> str:
    file = client.files.create(file=(f"{task}-train.jsonl", to_jsonl(data.train)),
                               purpose="fine-tune")
    return file.id


def create(client: OpenAI, *, model: str, file_id: str, method: Method,
           values: dict[str, Any], seed: int, suffix: str) -> str:
    """Create one job as a user would (``auto`` for every value not in ``values``)."""
    job = client.fine_tuning.jobs.create(model=model, training_file=file_id, seed=seed,
                                         suffix=suffix,
                                         method=job_method(method, values))  # type: ignore[arg-type]
    print(f"  job {job.id} ({suffix})", flush=True)
    return job.id


def resolved_method(client: OpenAI, job_id: str, timeout: float,
                    poll: float = 1.0) -> dict[str, Any] | None:
    """The job's ``method`` once validation has filled in every ``auto`` value (the job has
    left ``validating_files``); None when it failed or was cancelled there instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("failed", "cancelled"):
            return None
        if job.status != "validating_files":
            return job.method.model_dump() if job.method else None
        time.sleep(poll)
    return None


def settle(client: OpenAI, job_id: str, timeout: float) -> Trained:
    """Wait for a job to settle (printing each status it passes)."""
    try:
        job, _ = wait_for_job(client, job_id, timeout)
    except TimeoutError:
        client.fine_tuning.jobs.cancel(job_id)
        return Trained(job_id, "timed out", None, None, None, None,
                       f"not settled after {timeout:.0f}s (cancelled)")
    status = job.status
    seconds = float(job.finished_at - job.created_at) if job.finished_at else None
    error = job.error.message if job.error and job.error.message else None
    return Trained(job.id, status, job.fine_tuned_model, job.trained_tokens, seconds,
                   job.method.model_dump() if job.method else None, error)


def same_settings(method: Mapping[str, Any] | None,
                  earlier: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The earlier arm (on the same task, so the same file and seed) whose job resolved to
    exactly ``method``: its model is the one this job would train, since the same file,
    seed and settings give the same model (``tests/training/test_determinism.py``).

    >>> m = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}
    >>> same_settings(m, {"old": dict(m)}), same_settings(m, {}), same_settings(None, {"x": m})
    ('old', None, None)
    """
    if method is None:
        return None
    return next((arm for arm, seen in earlier.items() if seen == method), None)


def full_finetune(method: Mapping[str, Any] | None) -> bool:
    """Whether a job's resolved ``method`` trains every weight (no adapter to serve).

    >>> full_finetune({"type": "supervised",
    ...                "supervised": {"hyperparameters": {"full_finetune": True}}})
    True
    >>> dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}
    >>> full_finetune(dpo), full_finetune(None)
    (False, False)
    """
    if not method:
        return False
    section = method.get(method.get("type") or "") or {}
    return bool((section.get("hyperparameters") or {}).get("full_finetune"))
