"""The best checkpoint and the verdict on the final model: the choice as a pure function, and
the job object as the scheduler's ingest and settle leave it, the run's side played by event
batches (fake Ray, in-memory bucket: the harness of ``test_job_transitions``)."""

from __future__ import annotations

import doctest
import math
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import service.jobs.best
from contract.events import (
    BaselineData,
    BaselineEvent,
    CheckpointEvent,
    MetricsData,
    MetricsEvent,
    ResultData,
    ResultEvent,
)
from service.jobs.best import Scored, best_of, loss_of, verdict
from service.jobs.scheduler import Scheduler
from service.main import build_context, create_app
from tests.service.conftest import KEY_A, api_settings, chat_jsonl, chat_line
from tests.service.fake_ray import FakeRay, MemoryBlobs
from tests.service.openai_spec import template_of, validate_response
from tests.service.test_files_and_auth import upload
from tests.service.test_job_transitions import JOBS, Jobs


@pytest.fixture
def jobs(tmp_path: Path, tiny_model_dir: Path, database_url: str) -> Iterator[Jobs]:
    """The API on both databases, with a fake Ray and an in-memory bucket: the run's side
    is played by the test, writing event batches as the training run does."""
    ray, blobs = FakeRay(), MemoryBlobs()
    app = create_app(api_settings(tmp_path, tiny_model_dir, database_url), run_scheduler=False,
                     context=partial(build_context, blobs=blobs, ray=ray))
    with TestClient(app) as client:
        yield Jobs(client, {"Authorization": f"Bearer {KEY_A}"}, Scheduler(app.state.ctx),
                   ray, blobs)


def test_docstring_examples_hold():
    assert doctest.testmod(service.jobs.best).failed == 0


# -- the choice, pure ---------------------------------------------------------------------
def ckpt(step: int, loss: float) -> Scored:
    return Scored(f"ftckpt-{step}", step, f"ft:m:ckpt-step-{step}", loss)


@pytest.mark.parametrize(("metrics", "loss"), [
    ({"full_valid_loss": 0.25}, 0.25),
    ({"full_valid_loss": 2}, 2.0),
    ({"full_valid_loss": None}, math.inf),  # NaN or inf, stored as null: diverged
    ({"step": 3, "train_loss": 1.0}, None),  # no validation file
    ({}, None),
    (None, None),
])
def test_a_checkpoints_loss_reads_from_its_metrics(metrics, loss):
    assert loss_of(metrics) == loss


@pytest.mark.parametrize(("checkpoints", "best_step"), [
    ([], None),
    ([ckpt(3, 0.9)], 3),
    ([ckpt(3, 0.9), ckpt(6, 0.4), ckpt(9, 0.7)], 6),
    ([ckpt(3, 0.4), ckpt(6, 0.4)], 3),  # equal: the earlier (fewer steps away from base)
    ([ckpt(3, math.inf), ckpt(6, 1.2)], 6),  # a diverged checkpoint is never best
    ([ckpt(3, math.inf)], None),
])
def test_the_best_is_the_lowest_finite_loss(checkpoints, best_step):
    best = best_of(checkpoints)
    assert (best.step_number if best else None) == best_step


@pytest.mark.parametrize(("final", "best", "base", "says"), [
    (ckpt(9, 0.3), ckpt(9, 0.3), 0.9, None),  # the final model is the best: no warning
    (ckpt(9, 0.3), ckpt(9, 0.3), None, None),
    (None, None, 0.9, None),  # no validation file
    (ckpt(9, 0.6), ckpt(3, 0.4), 0.9, ["than checkpoint ft:m:ckpt-step-3 (step 3, full "
                                       "validation loss 0.4000)", "0.6000",
                                       "Use the best checkpoint"]),
    (ckpt(9, 1.1), ckpt(9, 1.1), 0.9, ["than the base model before training (0.9000)",
                                       "1.1000", "lower learning rate"]),
    (ckpt(9, 1.1), ckpt(3, 0.5), 0.9, ["than checkpoint ft:m:ckpt-step-3",
                                       "and than the base model"]),
    (ckpt(9, math.inf), ckpt(3, 0.5), 0.9, ["not a number (training diverged)",
                                            "than checkpoint ft:m:ckpt-step-3"]),
    (ckpt(9, math.inf), None, 0.9, ["than the base model", "diverged"]),
    (ckpt(9, 0.9), ckpt(9, 0.9), 0.9, None),  # as good as the base: not worse
])
def test_the_verdict_names_what_the_final_model_is_worse_than(final, best, base, says):
    message = verdict(final, best, base)
    if says is None:
        assert message is None
    else:
        assert message is not None and message.startswith("The final model is worse")
        for part in says:
            assert part in message


# -- the job object, from the run's events ------------------------------------------------
def jsonl(lines: Iterable[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def running_with_validation(jobs: Jobs) -> str:
    train = upload(jobs.client, jobs.headers, chat_jsonl(12)).json()["id"]
    valid = upload(jobs.client, jobs.headers, jsonl(chat_line(i) for i in range(100, 110)),
                   name="valid.jsonl").json()["id"]
    resp = jobs.client.post(JOBS, headers=jobs.headers, json={
        "model": "tiny-llama", "training_file": train, "validation_file": valid})
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["id"]
    assert resp.json()["best_checkpoint"] is None and resp.json()["base_valid_loss"] is None
    jobs.scheduler.tick()
    assert jobs.get(job_id)["status"] == "queued", jobs.messages(job_id)
    jobs.ray.report(jobs.run_of(job_id), "RUNNING")
    jobs.scheduler.tick()
    assert jobs.get(job_id)["status"] == "running"
    return job_id


def baseline(loss: float) -> BaselineEvent:
    return BaselineEvent(message=f"Validation loss before training: {loss:.4f}",
                         data=BaselineData(full_valid_loss=loss,
                                           full_valid_mean_token_accuracy=0.1))


def step(n: int, full_valid_loss: float | None = None, total: int = 9) -> MetricsEvent:
    extra = {} if full_valid_loss is None else {"full_valid_loss": full_valid_loss}
    return MetricsEvent(message=f"Step {n}/{total}", data=MetricsData(
        step=n, total_steps=total, train_loss=1.0, **extra))


def scored_checkpoint(jobs: Jobs, job_id: str, n: int, loss: float) -> CheckpointEvent:
    event = jobs.checkpoint(job_id, n)
    event.data.metrics = {"step": n, "train_loss": 1.0, "full_valid_loss": loss}
    return event


def finish(jobs: Jobs, job_id: str, *events) -> dict:
    result = ResultEvent(message="done", data=ResultData(
        trained_tokens=100, model_key=jobs.spec(job_id).model_key))
    jobs.write(job_id, *events, result)
    jobs.ray.report(jobs.run_of(job_id), "SUCCEEDED")
    jobs.scheduler.tick()
    job = jobs.get(job_id)
    assert job["status"] == "succeeded", job
    return job


def events_of(jobs: Jobs, job_id: str) -> list[dict]:
    return jobs.client.get(f"{JOBS}/{job_id}/events?limit=100",
                           headers=jobs.headers).json()["data"]


def verdicts(jobs: Jobs, job_id: str) -> list[str]:
    """The warnings about the final model (the data report may warn about the files too)."""
    return [e["message"] for e in events_of(jobs, job_id)
            if e["level"] == "warn" and e["message"].startswith("The final model")]


def test_baseline_and_each_checkpoints_loss_name_the_best_as_they_arrive(jobs):
    job_id = running_with_validation(jobs)
    jobs.write(job_id, baseline(2.5), step(1), step(2), step(3, 1.2),
               scored_checkpoint(jobs, job_id, 3, 1.2))
    jobs.scheduler.tick()
    job = jobs.get(job_id)
    assert job["base_valid_loss"] == 2.5
    [first] = jobs.checkpoints(job_id)
    assert job["best_checkpoint"] == {
        "id": first["id"], "step_number": 3, "full_valid_loss": 1.2,
        "fine_tuned_model_checkpoint": first["fine_tuned_model_checkpoint"]}
    assert first["metrics"]["full_valid_loss"] == 1.2
    # The baseline is a message event with its numbers, for a client drawing the curve.
    [base_event] = [e for e in events_of(jobs, job_id)
                    if e["message"] == "Validation loss before training: 2.5000"]
    assert base_event["type"] == "message" and base_event["data"]["full_valid_loss"] == 2.5

    jobs.write(job_id, step(4), step(5), step(6, 0.7), scored_checkpoint(jobs, job_id, 6, 0.7))
    jobs.scheduler.tick()
    assert jobs.get(job_id)["best_checkpoint"]["step_number"] == 6
    jobs.write(job_id, step(7), step(8), step(9, 0.9), scored_checkpoint(jobs, job_id, 9, 0.9))
    jobs.scheduler.tick()
    assert jobs.get(job_id)["best_checkpoint"]["step_number"] == 6  # a higher one is not
    # The list carries the extension fields too, read from the job row.
    [listed] = jobs.client.get(JOBS, headers=jobs.headers).json()["data"]
    assert listed["best_checkpoint"]["step_number"] == 6 and listed["base_valid_loss"] == 2.5

    job = finish(jobs, job_id)
    assert job["best_checkpoint"]["fine_tuned_model_checkpoint"] == (
        f"{job['fine_tuned_model']}:ckpt-step-6")
    [warning] = verdicts(jobs, job_id)
    assert warning.startswith(
        f"The final model is worse on the validation file than checkpoint "
        f"{job['fine_tuned_model']}:ckpt-step-6 (step 6, full validation loss 0.7000)")
    # The job object with its extension fields is still OpenAI's FineTuningJob.
    validate_response("GET", template_of("GET", f"{JOBS}/{job_id}"), 200, job)
    checkpoints = jobs.client.get(f"{JOBS}/{job_id}/checkpoints", headers=jobs.headers).json()
    validate_response("GET", template_of("GET", f"{JOBS}/{job_id}/checkpoints"), 200,
                      checkpoints)


def test_a_final_model_that_is_the_best_gets_no_warning(jobs):
    job_id = running_with_validation(jobs)
    jobs.write(job_id, baseline(2.5), step(1), scored_checkpoint(jobs, job_id, 1, 1.5))
    # The final step's checkpoint event may never come (the run ended first): settle makes
    # the final checkpoint from the last metrics event, full validation loss included.
    job = finish(jobs, job_id, step(2, 1.0, total=2))
    assert job["best_checkpoint"]["step_number"] == 2
    assert job["best_checkpoint"]["full_valid_loss"] == 1.0
    assert verdicts(jobs, job_id) == []


def test_a_final_model_worse_than_the_base_is_warned_about(jobs):
    job_id = running_with_validation(jobs)
    job = finish(jobs, job_id, baseline(0.8), step(1), step(2, 1.3, total=2),
                 scored_checkpoint(jobs, job_id, 2, 1.3))
    assert job["best_checkpoint"]["step_number"] == 2 and job["base_valid_loss"] == 0.8
    [warning] = verdicts(jobs, job_id)
    assert "than the base model before training (0.8000)" in warning


def test_a_diverged_final_model_is_warned_about_and_never_best(jobs):
    job_id = running_with_validation(jobs)
    job = finish(jobs, job_id, baseline(2.0), step(1, 1.5, total=2),
                 scored_checkpoint(jobs, job_id, 1, 1.5), step(2, math.nan, total=2),
                 scored_checkpoint(jobs, job_id, 2, math.nan))
    assert job["best_checkpoint"]["step_number"] == 1
    [warning] = verdicts(jobs, job_id)
    assert "not a number (training diverged)" in warning
    # OpenAI types each metric as a number: the one the run could not compute is left out.
    final = jobs.checkpoints(job_id)[0]
    assert final["step_number"] == 2 and "full_valid_loss" not in final["metrics"]


def test_a_baseline_measured_again_after_a_restart_is_recorded_once(jobs):
    job_id = running_with_validation(jobs)
    jobs.write(job_id, baseline(2.5))
    jobs.scheduler.tick()
    jobs.write(job_id, baseline(2.5))  # Ray Train restarted the workers before step 1
    jobs.scheduler.tick()
    messages = [e["message"] for e in events_of(jobs, job_id)]
    assert messages.count("Validation loss before training: 2.5000") == 1


def test_a_job_without_a_validation_file_has_neither_field(jobs):
    job_id = jobs.running()
    job = finish(jobs, job_id, step(1, total=1), jobs.checkpoint(job_id, 1))
    assert job["best_checkpoint"] is None and job["base_valid_loss"] is None
    assert verdicts(jobs, job_id) == []
