"""What the end-to-end cluster tests share: the base model's id, a pod's environment, a
chart Job run to its end, and a question the model answers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from openai import OpenAI

from devstack.processes import start
from tests.support.dockerfile import image_env

BASE_ID = "tiny-llama"

IMAGE_ENV = {**image_env(Path(__file__).parents[2] / "deploy" / "ray.Dockerfile"),
             "RAY_AUTH_MODE": "disabled"}
"""The ENV lines of the Ray image, which every Ray pod starts with; Ray's token auth off (the
chart's test, tests/e2e/test_chart_wiring.py, runs with it on, as KubeRay sets it)."""


def pod_env(**variables: str) -> dict[str, str]:
    """A container's environment: the image's, plus what the pod spec sets. Nothing of this
    test process leaks in (no OPENFT_*, no AWS_*), so a setting the chart forgets fails here."""
    host = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    return {**host, **IMAGE_ENV, **variables}


def run_to_end(name: str, argv: list[str], log_dir: Path, env: dict[str, str],
               timeout: float) -> None:
    """Run a one-shot command (a chart's Job) in its own process group; fail with its log."""
    proc = start(name, argv, log_dir, env)
    try:
        rc = proc.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.stop()
        raise AssertionError(
            f"{name} still running after {timeout:.0f}s:\n{proc.log_tail()}") from None
    assert rc == 0, f"{name} exited {rc}:\n{proc.log_tail(60)}"



def answer(client: OpenAI, model: str) -> str:
    out = client.chat.completions.create(
        model=model, max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert out.model == model
    return out.choices[0].message.content or ""




def start_capitals_job(client: OpenAI, repeats: int, n_epochs: int, suffix: str):
    """Upload the capitals file (``repeats`` copies of the pairs) and start a two-worker LoRA
    job on the base model, four examples a step."""
    from tests.training.runs import PAIRS, chat_line

    rows = [chat_line(country, city) for country, city in PAIRS * repeats]
    uploaded = client.files.create(file=("capitals.jsonl", ("\n".join(rows) + "\n").encode()),
                                   purpose="fine-tune")
    return client.fine_tuning.jobs.create(
        model=BASE_ID, training_file=uploaded.id, suffix=suffix,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": n_epochs, "batch_size": 4, "learning_rate_multiplier": 20,
            "num_workers": 2}}})
