"""The best checkpoint and the verdict on real runs (API process, Ray Train + DeepSpeed on
the session's Ray head and SeaweedFS): two jobs with a validation file, trained at once. One
(LoRA) learns what its validation file asks. The other overfits: a full fine-tune at a
hundred times the usual learning rate, trained on sums and validated on geography, it ends
far worse on its validation file than the base model was, and must be warned about."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from tests.service.conftest import chat_line
from tests.support.api_process import api_env_for, api_process, wait_status

pytestmark = pytest.mark.slow

TERMINAL = {"succeeded", "failed", "cancelled"}
BEFORE = "Validation loss before training: "
CAPITALS = [("Poland", "Warsaw"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
            ("Sweden", "Stockholm"), ("Portugal", "Lisbon"), ("Finland", "Helsinki"),
            ("Hungary", "Budapest"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"),
            ("Turkey", "Ankara")]


def jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def geography() -> bytes:
    return jsonl([json.dumps({"messages": [
        {"role": "user", "content": f"What is the capital of {country}?"},
        {"role": "assistant", "content": f"The capital of {country} is {city}."}]})
        for country, city in CAPITALS])


def raw_job(client: OpenAI, job_id: str) -> dict[str, Any]:
    """The job as the SDK received it, extension fields included (kept as extras)."""
    return client.fine_tuning.jobs.retrieve(job_id).to_dict()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, s3_server, ray_head, tiny_model_dir) -> Iterator[tuple[OpenAI, dict]]:
    root = tmp_path_factory.mktemp("best-checkpoint")
    env = api_env_for(root, s3_server, ray_head, tiny_model_dir)
    with api_process(env, root) as client:
        def upload(body: bytes) -> str:
            return client.files.create(file=("f.jsonl", body), purpose="fine-tune").id

        sums = upload(jsonl([chat_line(i) for i in range(12)]))
        created = {
            "learns": client.fine_tuning.jobs.create(
                model="tiny-llama", training_file=sums,
                validation_file=upload(jsonl([chat_line(i) for i in range(20, 30)])),
                hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 20}),
            "overfits": client.fine_tuning.jobs.create(
                model="tiny-llama", training_file=sums, validation_file=upload(geography()),
                method={"type": "supervised", "supervised": {"hyperparameters": {
                    "n_epochs": 3, "learning_rate_multiplier": 100, "full_finetune": True}}}),
        }
        done = {name: wait_status(client, job.id, TERMINAL, timeout=900)
                for name, job in created.items()}
        for job in done.values():
            assert job.status == "succeeded", job.error
        yield client, {name: raw_job(client, job.id) for name, job in done.items()}


def checkpoints_of(client: OpenAI, job_id: str) -> list[dict[str, Any]]:
    """Newest first, as JSON (metrics as the API sent them)."""
    return [c.to_dict() for c in client.fine_tuning.jobs.checkpoints.list(job_id, limit=100)]


def events_of(client: OpenAI, job_id: str) -> list[Any]:
    return list(client.fine_tuning.jobs.list_events(job_id, limit=1000))


@pytest.mark.parametrize("name", ["learns", "overfits"])
def test_base_loss_and_every_checkpoints_loss_are_reported(runs, name):
    client, jobs = runs
    job = jobs[name]
    [before] = [e for e in events_of(client, job["id"]) if e.message.startswith(BEFORE)]
    assert job["base_valid_loss"] > 0
    assert before.message == f"{BEFORE}{job['base_valid_loss']:.4f}"
    checkpoints = checkpoints_of(client, job["id"])
    assert len(checkpoints) == 3  # one per epoch
    for c in checkpoints:
        assert c["metrics"]["full_valid_loss"] > 0


def test_best_checkpoint_is_the_lowest_and_a_model_of_the_organization(runs):
    client, jobs = runs
    job = jobs["learns"]
    checkpoints = checkpoints_of(client, job["id"])
    lowest = min(checkpoints, key=lambda c: (c["metrics"]["full_valid_loss"], c["step_number"]))
    assert job["best_checkpoint"] == {
        "id": lowest["id"], "step_number": lowest["step_number"],
        "fine_tuned_model_checkpoint": lowest["fine_tuned_model_checkpoint"],
        "full_valid_loss": lowest["metrics"]["full_valid_loss"]}
    # Learning the validation file's task: better than the base model.
    assert lowest["metrics"]["full_valid_loss"] < job["base_valid_loss"]
    assert job["best_checkpoint"]["fine_tuned_model_checkpoint"] in [
        m.id for m in client.models.list()]
    # The listed job carries the fields too.
    listed = {j.id: j for j in client.fine_tuning.jobs.list(limit=10)}
    assert listed[job["id"]].model_extra["best_checkpoint"] == job["best_checkpoint"]


def test_a_final_model_worse_than_the_base_gets_a_warning(runs):
    client, jobs = runs
    job = jobs["overfits"]
    # One warning about the final model (the data report may warn about the files too).
    warnings = [e.message for e in events_of(client, job["id"])
                if e.level == "warn" and e.message.startswith("The final model")]
    assert len(warnings) == 1, [e.message for e in events_of(client, job["id"])]
    assert warnings[0].startswith("The final model is worse on the validation file")
    assert "than the base model before training" in warnings[0]
    checkpoints = checkpoints_of(client, job["id"])
    assert checkpoints[0]["metrics"]["full_valid_loss"] > job["base_valid_loss"]  # the final
    lowest = min(checkpoints, key=lambda c: (c["metrics"]["full_valid_loss"], c["step_number"]))
    assert job["best_checkpoint"]["id"] == lowest["id"]
