"""Waiting on a fine-tuning job through the official SDK, as a user's script would."""

from __future__ import annotations

import time

from openai import OpenAI

TERMINAL = ("succeeded", "failed", "cancelled")


def wait_for_terminal(client: OpenAI, job_id: str, timeout: float, every: float = 1.0):
    """The job once it settles; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in TERMINAL:
            return job
        time.sleep(every)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout:.0f}s")
