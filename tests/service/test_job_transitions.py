"""Every move of a job's life, through the API and the scheduler's stages, against a fake Ray
and an in-memory bucket: the run's side is played by event batches written with
:mod:`contract.events`, exactly as the training driver writes them (no Ray, no S3 server)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from contract.bucket import (
    adapter_prefix,
    checkpoint_key,
    checkpoint_model_key,
    control_key,
    event_batch_key,
    events_prefix,
    spec_key,
)
from contract.events import (
    CheckpointData,
    CheckpointEvent,
    ErrorData,
    ErrorEvent,
    MetricsData,
    MetricsEvent,
    PausedData,
    PausedEvent,
    ResultData,
    ResultEvent,
    TrainingEvent,
    encode_batch,
)
from contract.spec import TrainingSpec
from devstack.databases import database_for
from service.jobs.scheduler import Scheduler
from service.lifecycle import (
    ACTIVE,
    CANCELLABLE,
    FOLLOWED,
    MOVES,
    PAUSABLE,
    TERMINAL,
    IllegalTransition,
    JobStatus,
    check_move,
    transition,
)
from service.main import build_context, create_app
from service.settings import Settings
from tests.service.conftest import KEY_A, api_settings, chat_jsonl
from tests.service.fake_ray import FakeRay, MemoryBlobs, node
from tests.service.openai_spec import openapi_document
from tests.service.test_files_and_auth import assert_envelope, upload

JOBS = "/v1/fine_tuning/jobs"


BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"],
                                         indirect=True)
"""The moves run on SQLite (fast); the longest lives run on PostgreSQL too."""


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_for(getattr(request, "param", "sqlite"), tmp_path) as url:
        yield url


@pytest.fixture
def ray() -> FakeRay:
    return FakeRay()


@pytest.fixture
def blobs() -> MemoryBlobs:
    return MemoryBlobs()


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path, database_url: str) -> Settings:
    return api_settings(tmp_path, tiny_model_dir, database_url)


@pytest.fixture
def app(settings: Settings, ray: FakeRay, blobs: MemoryBlobs):
    return create_app(settings, run_scheduler=False,
                      context=partial(build_context, blobs=blobs, ray=ray))


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def scheduler(client: TestClient, app) -> Scheduler:
    return Scheduler(app.state.ctx)


class Jobs:
    """One organization's view of the API, with the run's side played by the test."""

    def __init__(self, client: TestClient, headers: dict[str, str], scheduler: Scheduler,
                 ray: FakeRay, blobs: MemoryBlobs):
        self.client, self.headers, self.scheduler = client, headers, scheduler
        self.ray, self.blobs = ray, blobs

    def create(self, body: bytes = b"", **hyperparameters) -> str:
        resp = self.ask(body, **hyperparameters)
        assert resp.status_code == 200, resp.text
        return resp.json()["id"]

    def ask(self, body: bytes = b"", **hyperparameters):
        """The create request itself, answered as it is."""
        file_id = upload(self.client, self.headers, body or chat_jsonl(12)).json()["id"]
        method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
        return self.client.post(JOBS, headers=self.headers, json={
            "model": "tiny-llama", "training_file": file_id, "method": method})

    def get(self, job_id: str) -> dict:
        return self.client.get(f"{JOBS}/{job_id}", headers=self.headers).json()

    def post(self, job_id: str, action: str):
        return self.client.post(f"{JOBS}/{job_id}/{action}", headers=self.headers)

    def messages(self, job_id: str) -> list[str]:
        events = self.client.get(f"{JOBS}/{job_id}/events?limit=100", headers=self.headers)
        return [e["message"] for e in events.json()["data"]]

    def checkpoints(self, job_id: str) -> list[dict]:
        return self.client.get(f"{JOBS}/{job_id}/checkpoints", headers=self.headers
                               ).json()["data"]

    def run_of(self, job_id: str) -> str:
        """The submission id of the job's latest run."""
        runs = [sid for sid, sub in self.ray.submitted.items()
                if sub.metadata["openft_job_id"] == job_id]
        assert runs, f"{job_id} was never submitted"
        return runs[-1]

    def spec(self, job_id: str) -> TrainingSpec:
        return TrainingSpec.model_validate_json(self.blobs.get(spec_key(job_id)))

    def write(self, job_id: str, *events: TrainingEvent) -> None:
        """One event batch, numbered after those already there, as a run appends them."""
        seq = len([k for k in self.blobs.objects if k.startswith(events_prefix(job_id))])
        body = encode_batch(events)
        self.blobs.put(event_batch_key(job_id, seq), body)

    def checkpoint(self, job_id: str, step: int) -> CheckpointEvent:
        model_key = checkpoint_model_key(self.spec(job_id).model_key, step)
        return CheckpointEvent(message=f"Checkpoint at step {step}", data=CheckpointData(
            step=step, checkpoint_key=checkpoint_key(job_id, step),
            adapter_key=adapter_prefix(model_key), model_key=model_key))

    # -- a job brought to a status -------------------------------------------------------
    def queued(self) -> str:
        """Validated and submitted; Ray has not started it yet."""
        job_id = self.create()
        self.scheduler.tick()
        assert self.get(job_id)["status"] == "queued"
        assert self.ray.status(self.run_of(job_id)).status == "PENDING"
        return job_id

    def running(self) -> str:
        job_id = self.queued()
        self.ray.report(self.run_of(job_id), "RUNNING")
        self.scheduler.tick()
        assert self.get(job_id)["status"] == "running"
        return job_id

    def paused(self) -> str:
        job_id = self.running()
        assert self.post(job_id, "pause").json()["status"] == "paused"
        return job_id


@pytest.fixture
def jobs(client, scheduler, ray, blobs) -> Jobs:
    return Jobs(client, {"Authorization": f"Bearer {KEY_A}"}, scheduler, ray, blobs)


def metrics(step: int, total: int = 2, loss: float = 1.0) -> MetricsEvent:
    return MetricsEvent(message=f"Step {step}/{total}: training loss={loss}",
                        data=MetricsData(step=step, total_steps=total, train_loss=loss))


# -- the table ----------------------------------------------------------------------------
def test_statuses_are_openais_and_the_sets_follow_from_the_table():
    schema = openapi_document()["components"]["schemas"]["FineTuningJob"]
    assert {s.value for s in JobStatus} == set(schema["properties"]["status"]["enum"])
    assert TERMINAL == {"succeeded", "failed", "cancelled"}
    assert ACTIVE == CANCELLABLE == {"validating_files", "queued", "running", "paused"}
    assert PAUSABLE == {"queued", "running"}
    assert FOLLOWED == {"queued", "running", "paused"}
    assert all(not MOVES[s] for s in TERMINAL)


@pytest.mark.parametrize("frm, to", [("succeeded", JobStatus.RUNNING),
                                     ("validating_files", JobStatus.RUNNING),
                                     ("cancelled", JobStatus.QUEUED),
                                     ("paused", JobStatus.RUNNING)])
def test_a_move_the_table_forbids_is_a_programming_error(frm, to):
    with pytest.raises(IllegalTransition):
        check_move([frm], to)


def test_transition_refuses_a_forbidden_move_and_changes_nothing(jobs, app):
    job_id = jobs.create()
    with app.state.ctx.db.session() as s, pytest.raises(IllegalTransition):
        transition(s, job_id, [JobStatus.VALIDATING_FILES], JobStatus.SUCCEEDED, "no")
    assert jobs.get(job_id)["status"] == "validating_files"


# -- validating_files -> queued | failed ---------------------------------------------------
def test_valid_files_queue_the_job_with_its_spec_written(jobs):
    job_id = jobs.create()
    jobs.scheduler.validate(job_id)
    job = jobs.get(job_id)
    assert job["status"] == "queued"
    spec = jobs.spec(job_id)
    assert spec.hyperparameters.n_epochs == job["hyperparameters"]["n_epochs"] == 9
    shown = job["method"]["supervised"]["hyperparameters"]
    assert shown == spec.hyperparameters.method_dict() and "learning_rate" not in shown
    assert "Files validated, moving job to queued state" in jobs.messages(job_id)
    assert jobs.ray.submitted == {}  # validation alone launches nothing


def test_a_bad_line_fails_the_job_naming_it(jobs):
    lines = chat_jsonl(12).decode().splitlines()
    lines[4] = '{"messages": "not a list"}'
    job_id = jobs.create(("\n".join(lines) + "\n").encode())
    jobs.scheduler.tick()
    job = jobs.get(job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_training_file"
    assert job["error"]["param"] == "training_file" and "Line 5" in job["error"]["message"]
    assert jobs.ray.submitted == {} and not jobs.blobs.exists(spec_key(job_id))


def test_a_deeply_nested_line_fails_the_job_naming_it(jobs):
    """Issue 16 (3): such a line raised RecursionError, and the job stayed validating."""
    lines = chat_jsonl(12).decode().splitlines()
    lines[2] = "[" * 100_000 + "]" * 100_000
    job_id = jobs.create(("\n".join(lines) + "\n").encode())
    jobs.scheduler.tick()
    job = jobs.get(job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_training_file"
    assert "Line 3" in job["error"]["message"] and "nested too deeply" in job["error"]["message"]


# -- queued -> running -----------------------------------------------------------------------
def test_a_queued_job_is_submitted_once_and_runs_when_ray_starts_it(jobs):
    job_id = jobs.queued()
    sid = jobs.run_of(job_id)
    assert sid == f"openft-{job_id}"
    assert jobs.ray.submitted[sid].entrypoint.endswith(
        f"-m training.driver s3://openft/{spec_key(job_id)}")
    jobs.scheduler.tick()  # Ray still PENDING: still queued, not submitted twice
    assert jobs.get(job_id)["status"] == "queued" and len(jobs.ray.submitted) == 1
    jobs.ray.report(sid, "RUNNING")
    jobs.scheduler.tick()
    assert jobs.get(job_id)["status"] == "running"
    assert "Fine-tuning job started" in jobs.messages(job_id)


def test_a_refused_submit_is_tried_again_next_tick(jobs):
    jobs.ray.refuse = True
    job_id = jobs.create()
    jobs.scheduler.tick()
    assert jobs.get(job_id)["status"] == "queued" and jobs.ray.submitted == {}
    jobs.ray.refuse = False
    jobs.scheduler.tick()
    assert jobs.run_of(job_id) == f"openft-{job_id}"


# -- the cluster's capacity --------------------------------------------------------------------
def test_a_job_the_cluster_can_never_hold_is_refused_at_create(jobs):
    jobs.ray.nodes = [node(cpus=0), node(cpus=2, free_cpus=1.5)]  # serving holds 0.5
    resp = jobs.ask(num_workers=2)
    assert_envelope(resp, 400, param="method.supervised.hyperparameters.num_workers",
                    code="invalid_value")
    assert "room for 1 worker" in resp.json()["error"]["message"]
    assert_envelope(jobs.ask(batch_size=3, num_workers=2), 400,
                    param="method.supervised.hyperparameters.batch_size")
    jobs.create(num_workers=1)


def running_on_half_the_cluster(jobs: Jobs, app) -> str:
    """A job whose 2 workers hold 2 of the 4 CPUs, with room for more jobs to run beside."""
    app.state.ctx.settings.max_concurrent_jobs = 3
    job_id = jobs.create(num_workers=2)
    jobs.scheduler.tick()
    jobs.ray.nodes = [node(cpus=4, free_cpus=2)]  # Ray placed its workers
    jobs.ray.report(jobs.run_of(job_id), "RUNNING")
    jobs.scheduler.tick()
    assert jobs.get(job_id)["status"] == "running"
    return job_id


def test_a_job_that_fits_later_waits_queued_saying_why_once_then_launches(jobs, app):
    first = running_on_half_the_cluster(jobs, app)
    job_id = jobs.create(num_workers=3)  # fits the cluster once the first job ends
    for _ in range(3):
        jobs.scheduler.tick()
    assert jobs.get(job_id)["status"] == "queued" and len(jobs.ray.submitted) == 1
    waiting = [m for m in jobs.messages(job_id) if m.startswith("Waiting for room")]
    assert waiting == ["Waiting for room on the Ray cluster: this job needs 3 worker(s) of "
                       "1 CPU, 2 free now"]
    assert jobs.post(first, "cancel").status_code == 200
    jobs.ray.nodes = [node(cpus=4)]
    jobs.scheduler.tick()
    assert jobs.run_of(job_id) == f"openft-{job_id}"
    assert jobs.messages(job_id)[0] == "Submitted the training run to Ray"


def test_jobs_queued_behind_a_waiting_one_wait_their_turn(jobs, app):
    first = running_on_half_the_cluster(jobs, app)
    big, small = jobs.create(num_workers=3), jobs.create(num_workers=1)
    jobs.scheduler.tick()
    assert len(jobs.ray.submitted) == 1  # the small one fits now, but the big one is older
    jobs.post(first, "cancel")
    jobs.ray.nodes = [node(cpus=4)]
    jobs.scheduler.tick()
    assert {jobs.run_of(big), jobs.run_of(small)} == {f"openft-{big}", f"openft-{small}"}


def test_a_gpu_cluster_trains_on_gpus(jobs):
    jobs.ray.nodes = [node(cpus=32, gpus=8, accelerator="H100")]
    job_id = jobs.create()
    jobs.scheduler.tick()
    spec = jobs.spec(job_id)
    assert spec.use_gpu is True and jobs.get(job_id)["status"] == "queued"
    assert (spec.hyperparameters.zero_stage, spec.hyperparameters.gradient_checkpointing) == (
        2, False)  # a tiny model fits one GPU many times over


def test_while_ray_is_unreachable_jobs_are_created_and_wait(jobs):
    jobs.ray.unreachable = True
    job_id = jobs.create(num_workers=8)  # capacity unknown: nothing refused
    jobs.scheduler.tick()
    assert jobs.get(job_id)["status"] == "validating_files" and jobs.ray.submitted == {}
    jobs.ray.unreachable = False
    jobs.scheduler.tick()
    assert jobs.get(job_id)["status"] == "queued"
    assert jobs.ray.submitted == {}  # 8 workers do not fit the 4 CPUs: waiting, not failed


def test_max_seq_length_follows_the_longest_example(jobs):
    job_id = jobs.create()
    jobs.scheduler.tick()
    hp = jobs.spec(job_id).hyperparameters
    assert hp.max_seq_length % 64 == 0 and hp.max_seq_length < 1024
    assert hp.batch_size == hp.num_workers == 1  # 12 examples: batch 1, never rounded up


# -- running -> succeeded | failed -----------------------------------------------------------
@BOTH_DATABASES
def test_a_result_event_and_a_clean_exit_succeed_the_job(jobs):
    job_id = jobs.running()
    model_key = jobs.spec(job_id).model_key
    jobs.write(job_id, metrics(1, loss=2.0), jobs.checkpoint(job_id, 1))
    jobs.scheduler.tick()
    assert jobs.get(job_id)["status"] == "running"
    jobs.write(job_id, metrics(2, loss=1.5), ResultEvent(
        message="done", data=ResultData(trained_tokens=321, model_key=model_key)))
    jobs.ray.report(jobs.run_of(job_id), "SUCCEEDED")
    jobs.scheduler.tick()

    job = jobs.get(job_id)
    assert job["status"] == "succeeded" and job["trained_tokens"] == 321
    assert job["fine_tuned_model"].startswith("ft:tiny-llama:")
    assert f"New fine-tuned model created: {job['fine_tuned_model']}" in jobs.messages(job_id)
    [result] = job["result_files"]
    csv = base64.b64decode(jobs.client.get(f"/v1/files/{result}/content",
                                           headers=jobs.headers).content).decode()
    assert csv.splitlines()[0] == "step,train_loss,train_accuracy,valid_loss," \
                                  "valid_mean_token_accuracy"
    assert [row.split(",")[:2] for row in csv.splitlines()[1:]] == [["1", "2.0"], ["2", "1.5"]]
    assert [c["step_number"] for c in jobs.checkpoints(job_id)] == [2, 1]
    models = [m["id"] for m in jobs.client.get("/v1/models", headers=jobs.headers
                                               ).json()["data"]]
    assert job["fine_tuned_model"] in models


def test_an_error_event_fails_the_job_with_the_runs_reason(jobs):
    job_id = jobs.running()
    jobs.write(job_id, ErrorEvent(message="Out of memory", data=ErrorData(
        code="invalid_training_file", message="Line 3 is too long", param="training_file")))
    jobs.ray.report(jobs.run_of(job_id), "FAILED", "Traceback ... RuntimeError")
    jobs.scheduler.tick()
    job = jobs.get(job_id)
    assert job["status"] == "failed"
    assert job["error"] == {"code": "invalid_training_file", "message": "Line 3 is too long",
                            "param": "training_file"}
    assert job["fine_tuned_model"] is None


def test_ray_failing_without_an_error_event_fails_the_job_with_rays_message(jobs):
    job_id = jobs.running()
    jobs.ray.report(jobs.run_of(job_id), "FAILED", "worker died: exit code 137")
    jobs.scheduler.tick()
    job = jobs.get(job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "server_error"
    assert job["error"]["message"] == "Training failed. worker died: exit code 137"


def test_a_clean_exit_without_a_model_fails_the_job(jobs):
    job_id = jobs.running()
    jobs.ray.report(jobs.run_of(job_id), "SUCCEEDED")
    jobs.scheduler.tick()
    job = jobs.get(job_id)
    assert job["status"] == "failed"
    assert job["error"]["message"] == "The training run ended without producing a model."


def test_a_run_stopped_outside_openft_fails_the_job(jobs):
    job_id = jobs.running()
    jobs.ray.report(jobs.run_of(job_id), "STOPPED")
    jobs.scheduler.tick()
    job = jobs.get(job_id)
    assert job["status"] == "failed"
    assert job["error"]["message"] == "The training run was stopped outside openft."


# -- pause, release, resume -------------------------------------------------------------------
def test_pausing_a_running_job_asks_the_run_to_checkpoint_and_stop(jobs):
    job_id = jobs.paused()
    assert json.loads(jobs.blobs.get(control_key(job_id))) == {"action": "pause"}
    jobs.scheduler.tick()  # the run has not stopped yet: the job stays paused
    assert jobs.get(job_id)["status"] == "paused"


@BOTH_DATABASES
def test_a_paused_run_that_ends_at_its_checkpoint_is_released_and_resumes_from_it(jobs):
    job_id = jobs.paused()
    first = jobs.run_of(job_id)
    jobs.write(job_id, jobs.checkpoint(job_id, 1), PausedEvent(
        message="Paused at step 1",
        data=PausedData(step=1, checkpoint_key=checkpoint_key(job_id, 1))))
    jobs.ray.report(first, "SUCCEEDED")
    jobs.scheduler.tick()
    assert jobs.get(job_id)["status"] == "paused"
    assert (f"Training stopped at checkpoint {checkpoint_key(job_id, 1)}; resume continues "
            "from there") in jobs.messages(job_id)
    assert list(jobs.ray.submitted) == [first]

    assert jobs.post(job_id, "resume").json()["status"] == "queued"
    assert not jobs.blobs.exists(control_key(job_id))
    jobs.scheduler.tick()
    assert jobs.run_of(job_id) == f"openft-{job_id}-r1"
    assert jobs.spec(job_id).resume_from == checkpoint_key(job_id, 1)
    jobs.ray.report(f"openft-{job_id}-r1", "RUNNING")
    jobs.scheduler.tick()
    assert jobs.get(job_id)["status"] == "running"


def test_a_queued_job_without_a_run_pauses_and_resumes_without_a_control_object(jobs):
    jobs.ray.refuse = True
    job_id = jobs.create()
    jobs.scheduler.tick()
    assert jobs.post(job_id, "pause").json()["status"] == "paused"
    assert not jobs.blobs.exists(control_key(job_id))
    assert jobs.post(job_id, "resume").json()["status"] == "queued"
    jobs.ray.refuse = False
    jobs.scheduler.tick()
    assert jobs.run_of(job_id) == f"openft-{job_id}"
    assert jobs.spec(job_id).resume_from is None


def test_a_queued_job_with_a_run_pauses_with_a_control_object(jobs):
    job_id = jobs.queued()
    assert jobs.post(job_id, "pause").json()["status"] == "paused"
    assert jobs.blobs.exists(control_key(job_id))


def test_a_pause_that_comes_too_late_still_succeeds_the_job(jobs):
    job_id = jobs.paused()
    jobs.write(job_id, metrics(1), ResultEvent(message="done", data=ResultData(
        trained_tokens=10, model_key=jobs.spec(job_id).model_key)))
    jobs.ray.report(jobs.run_of(job_id), "SUCCEEDED")
    jobs.scheduler.tick()
    assert jobs.get(job_id)["status"] == "succeeded"
    assert not jobs.blobs.exists(control_key(job_id))


@pytest.mark.parametrize("status", ["validating_files", "succeeded"])
def test_only_queued_or_running_jobs_pause_and_only_paused_ones_resume(jobs, status):
    job_id = jobs.create() if status == "validating_files" else jobs.running()
    if status == "succeeded":
        jobs.write(job_id, ResultEvent(message="done", data=ResultData(
            trained_tokens=10, model_key=jobs.spec(job_id).model_key)))
        jobs.ray.report(jobs.run_of(job_id), "SUCCEEDED")
        jobs.scheduler.tick()
    assert jobs.get(job_id)["status"] == status
    assert_envelope(jobs.post(job_id, "pause"), 400, code="invalid_state")
    assert_envelope(jobs.post(job_id, "resume"), 400, code="invalid_state")


# -- cancel -----------------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["validating_files", "queued", "running", "paused"])
def test_a_job_is_cancelled_from_every_active_status_and_its_run_stopped(jobs, status):
    job_id = jobs.create() if status == "validating_files" else getattr(jobs, status)()
    assert jobs.get(job_id)["status"] == status
    job = jobs.post(job_id, "cancel").json()
    assert job["status"] == "cancelled" and job["finished_at"]
    runs = [sid for sid, sub in jobs.ray.submitted.items()
            if sub.metadata["openft_job_id"] == job_id]
    assert jobs.ray.stopped == runs
    jobs.scheduler.tick()  # Ray's STOPPED does not turn it into failed
    assert jobs.get(job_id)["status"] == "cancelled"
    assert_envelope(jobs.post(job_id, "cancel"), 400, code="invalid_state")


def test_a_cancel_while_ray_is_away_is_recorded_and_the_run_stopped_once_it_is_back(jobs):
    job_id = jobs.running()
    jobs.ray.unreachable = True
    job = jobs.post(job_id, "cancel")
    assert job.status_code == 200 and job.json()["status"] == "cancelled"
    jobs.scheduler.tick()  # still away: the stop stays owed
    assert jobs.ray.stopped == []
    jobs.ray.unreachable = False
    jobs.scheduler.tick()
    jobs.scheduler.tick()
    assert jobs.ray.stopped == [jobs.run_of(job_id)]  # once
    assert jobs.get(job_id)["status"] == "cancelled"


@BOTH_DATABASES
@pytest.mark.parametrize("action", ["cancel", "pause"])
def test_a_cancel_or_pause_whose_commit_fails_is_not_done_at_all(jobs, action):
    job_id = jobs.running()

    def database_gone(_session) -> None:
        raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection"))

    event.listen(Session, "before_commit", database_gone)
    try:
        refused = jobs.post(job_id, action)
    finally:
        event.remove(Session, "before_commit", database_gone)
    assert_envelope(refused, 503, code="database_unavailable")
    # Not recorded, so not done: the run was neither stopped nor asked to pause.
    assert jobs.ray.stopped == [] and not jobs.blobs.exists(control_key(job_id))
    assert jobs.get(job_id)["status"] == "running"
    assert jobs.post(job_id, action).json()["status"] == {"cancel": "cancelled",
                                                          "pause": "paused"}[action]


def test_a_pause_the_bucket_missed_is_asked_again_until_the_run_stops(jobs):
    job_id = jobs.running()
    jobs.blobs.unreachable = True
    assert jobs.post(job_id, "pause").json()["status"] == "paused"  # recorded
    assert not jobs.blobs.exists(control_key(job_id))
    jobs.blobs.unreachable = False
    jobs.scheduler.tick()  # the run is still RUNNING: asked again
    assert json.loads(jobs.blobs.get(control_key(job_id))) == {"action": "pause"}
    assert jobs.get(job_id)["status"] == "paused"


# -- a run Ray forgot ---------------------------------------------------------------------------
@BOTH_DATABASES
def test_a_lost_run_resumes_from_its_last_checkpoint(jobs):
    job_id = jobs.running()
    jobs.write(job_id, metrics(1), jobs.checkpoint(job_id, 1), metrics(2),
               jobs.checkpoint(job_id, 2))
    jobs.scheduler.tick()
    jobs.ray.forget(jobs.run_of(job_id))
    jobs.scheduler.tick()
    assert jobs.get(job_id)["status"] == "queued"
    assert (f"The training run was lost; resuming from checkpoint {checkpoint_key(job_id, 2)}"
            in jobs.messages(job_id))
    jobs.scheduler.tick()
    assert jobs.run_of(job_id) == f"openft-{job_id}-r1"
    assert jobs.spec(job_id).resume_from == checkpoint_key(job_id, 2)


def test_a_lost_run_without_a_checkpoint_fails_the_job(jobs):
    job_id = jobs.running()
    jobs.ray.forget(jobs.run_of(job_id))
    jobs.scheduler.tick()
    job = jobs.get(job_id)
    assert job["status"] == "failed"
    assert job["error"]["message"] == "The training run was lost (Ray no longer knows it)."


# -- files in use ---------------------------------------------------------------------------------
@BOTH_DATABASES
def test_the_file_of_a_paused_job_cannot_be_deleted(jobs):
    """Regression: ``paused`` was missing from the files' in-use states, so the file could be
    deleted and the resumed run then failed reading it."""
    job_id = jobs.paused()
    file_id = jobs.get(job_id)["training_file"]
    assert_envelope(jobs.client.delete(f"/v1/files/{file_id}", headers=jobs.headers), 400,
                    param="file_id", code="file_in_use")
    jobs.post(job_id, "cancel")
    assert jobs.client.delete(f"/v1/files/{file_id}", headers=jobs.headers
                              ).json()["deleted"] is True
