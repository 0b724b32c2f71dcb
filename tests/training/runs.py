"""Training runs as the service starts them: a spec in S3, the driver through Ray's Jobs API.

Shared by the slow tests of ``tests/training``; no fixtures here, only helpers.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

from contract.bucket import events_prefix, spec_key
from contract.hyperparameters import DPO_BETA, Hyperparameters
from contract.spec import S3Location, TrainingSpec

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}

PAIRS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"),
    ("Chile", "Santiago"), ("Cuba", "Havana"), ("Greece", "Athens"), ("Norway", "Oslo"),
]  # fmt: skip
VALID_PAIRS = [
    ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Sweden", "Stockholm"),
    ("Portugal", "Lisbon"), ("Finland", "Helsinki"), ("Hungary", "Budapest"),
    ("Denmark", "Copenhagen"), ("Belgium", "Brussels"), ("Turkey", "Ankara"),
]  # fmt: skip
"""Held out: no country or capital of :data:`PAIRS`."""


def chat_line(country: str, city: str) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"What is the capital of {country}?"},
                {"role": "assistant", "content": f"The capital of {country} is {city}."},
            ]
        }
    )


def start(ray_head, s3_server, spec: TrainingSpec, attempt: int = 0, env: dict | None = None):
    """Upload the spec and start the driver as the service does; returns ``(client, id)``.

    ``env`` adds to (or overrides) the service's environment of the run.

    No ``working_dir`` or ``PYTHONPATH``: ``make`` installs openft into the venv
    (``pip install -e .``), whose interpreter runs the entrypoint and the Ray workers.
    """
    from ray.job_submission import JobSubmissionClient

    s3 = s3_server.client()
    s3.put_object(Bucket=s3_server.bucket, Key=spec_key(spec.job_id), Body=spec.model_dump_json())
    client = JobSubmissionClient(ray_head.dashboard_url)
    submission_id = submit_when_agent_ready(
        client,
        entrypoint=f"{sys.executable} -m training.driver "
        f"s3://{s3_server.bucket}/{spec_key(spec.job_id)}",
        submission_id=f"openft-{spec.job_id}" + (f"-r{attempt}" if attempt else ""),
        runtime_env={
            "env_vars": {
                **s3_server.env,
                # Ray Train's placement-group cleaner finds its cluster by this, not by
                # guessing, which fails when another Ray runs on the same host.
                "RAY_API_SERVER_ADDRESS": ray_head.dashboard_url,
                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                "PYTHONUNBUFFERED": "1",
                **(env or {}),
            }
        },
    )
    return client, submission_id


def wait(client, submission_id: str, timeout_s: float = 600) -> tuple[str, str]:
    """Wait for a terminal status (stop the job after ``timeout_s``); ``(status, logs)``."""
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(submission_id)
    while str(status.value) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(submission_id)
    if str(status.value) not in TERMINAL:
        client.stop_job(submission_id)
    return str(status.value), client.get_job_logs(submission_id)


def submit(ray_head, s3_server, spec: TrainingSpec, attempt: int = 0) -> tuple[str, str, str]:
    """Start the driver and wait for the end; returns ``(status, logs, submission_id)``."""
    client, submission_id = start(ray_head, s3_server, spec, attempt)
    status, logs = wait(client, submission_id)
    return status, logs, submission_id


def submit_when_agent_ready(client, **job) -> str:
    """A fresh head answers "No available agent to submit job" for its first seconds."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def make_spec(s3_server, model_dir: Path, training_file_key: str, **overrides) -> TrainingSpec:
    """A spec as the service resolves one; ``overrides`` name fields of the spec or of its
    :class:`Hyperparameters` alike."""
    job_id = f"ftjob-{uuid.uuid4().hex[:12]}"
    hyperparameters = dict(
        n_epochs=5,
        batch_size=4,
        learning_rate=1e-2,
        max_seq_length=128,
        lora_r=8,
        lora_alpha=16,
        num_workers=2,
        zero_stage=2,
    )
    if overrides.get("method") == "dpo":
        hyperparameters["beta"] = DPO_BETA  # the service's default for DPO
    hyperparameters.update(
        {name: overrides.pop(name) for name in list(overrides) if name in HYPERPARAMETERS}
    )
    fields = dict(
        job_id=job_id,
        base_model_id="tiny-llama",
        base_model_path=str(model_dir),
        training_file_key=training_file_key,
        model_key=f"tiny-llama-{job_id}",
        hyperparameters=Hyperparameters(**hyperparameters),
        seed=0,
        cpus_per_worker=1.0,
        s3=S3Location(endpoint_url=s3_server.endpoint_url, bucket=s3_server.bucket),
    )
    fields.update(overrides)
    return TrainingSpec(**fields)


HYPERPARAMETERS = set(Hyperparameters.model_fields)


def upload_file(s3_server, lines: list[str]) -> str:
    key = f"files/file-{uuid.uuid4().hex[:12]}"
    s3_server.client().put_object(
        Bucket=s3_server.bucket, Key=key, Body=("\n".join(lines) + "\n").encode()
    )
    return key


def upload_pairs(s3_server) -> str:
    return upload_file(s3_server, [chat_line(c, city) for c, city in PAIRS])


def read_events(s3_server, job_id: str) -> tuple[list[str], list[dict]]:
    s3 = s3_server.client()
    listing = s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=events_prefix(job_id))
    keys = sorted(item["Key"] for item in listing.get("Contents", []))
    events = []
    for key in keys:
        body = s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read().decode()
        events.extend(json.loads(line) for line in body.splitlines() if line.strip())
    return keys, events


def of_type(events: list[dict], type_: str) -> list[dict]:
    """The ``data`` of every event of one type, in order."""
    return [e["data"] for e in events if e["type"] == type_]

