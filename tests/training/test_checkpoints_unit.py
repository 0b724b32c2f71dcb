"""Pure parts of checkpoints, pause and resume: keys, step arithmetic, the pause watch."""

from __future__ import annotations

import doctest
import io
import itertools

import pytest

import contract.bucket
import training.checkpoints
import training.control
import training.trainer_state
from contract.bucket import RAY_TRAIN_SNAPSHOT, checkpoint_key, checkpoint_model_key, control_key
from contract.spec import S3Location, TrainingSpec
from training.control import PauseWatch, any_rank, wants_pause
from training.data import StepPlan, epoch_indices, plan_steps, resume_point
from training.driver import resumed_step, started_message
from training.trainer_state import TrainerState, checkpoint_due, run_shape


@pytest.mark.parametrize(
    "module",
    [training.checkpoints, training.trainer_state, training.control, contract.bucket],
)
def test_docstring_examples_hold(module):
    assert doctest.testmod(module).failed == 0


def test_keys():
    assert control_key("ftjob-abc") == "jobs/ftjob-abc/control.json"
    assert checkpoint_key("ftjob-abc", 7) == "jobs/ftjob-abc/checkpoints/step-00000007/"
    assert checkpoint_model_key("m-ftjob-abc", 123) == "m-ftjob-abc-step-00000123"


def test_spec_fields_default_to_no_extra_checkpoints_and_a_fresh_start():
    spec = TrainingSpec.model_validate(SPEC)
    assert spec.checkpoint_every_steps is None and spec.resume_from is None
    with pytest.raises(ValueError):
        TrainingSpec.model_validate({**SPEC, "checkpoint_every_steps": 0})


# 3 steps per epoch
PLAN = StepPlan(examples_per_rank_step=2, examples_per_rank_epoch=6, n_epochs=3)


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, (0, 0)), (1, (0, 2)), (2, (0, 4)), (3, (1, 0)), (5, (1, 4)), (8, (2, 4)), (9, (3, 0))],
)
def test_resume_point(step, expected):
    assert resume_point(step, PLAN) == expected


@pytest.mark.parametrize("step", [-1, 10])
def test_resume_point_refuses_steps_outside_the_run(step):
    with pytest.raises(ValueError):
        resume_point(step, PLAN)


def micro_batches(num_examples: int, plan: StepPlan, rank: int, world: int, step: int):
    """The examples a rank trains on from ``step`` on, as the training loop walks them."""
    first_epoch, first_micro = resume_point(step, plan)
    for epoch in range(first_epoch, plan.n_epochs):
        indices = epoch_indices(num_examples, plan, 0, epoch, rank, world)
        yield from indices[first_micro if epoch == first_epoch else 0 :]


@pytest.mark.parametrize(("num_examples", "world", "batch"), [(12, 2, 4), (13, 2, 4), (5, 2, 1)])
def test_a_resumed_run_sees_the_rest_of_the_uninterrupted_data_order(num_examples, world, batch):
    plan = plan_steps(num_examples, world, batch, n_epochs=3)
    for rank, step in itertools.product(range(world), range(plan.total_steps + 1)):
        whole = list(micro_batches(num_examples, plan, rank, world, step=0))
        rest = list(micro_batches(num_examples, plan, rank, world, step))
        assert rest == whole[step * plan.examples_per_rank_step :], (rank, step)


@pytest.mark.parametrize(
    ("every", "expected"),
    [(None, [3, 6, 9]), (2, [2, 3, 4, 6, 8, 9]), (3, [3, 6, 9]), (20, [3, 6, 9])],
)
def test_checkpoint_due_at_epoch_ends_and_every_n_steps(every, expected):
    assert [step for step in range(1, 10) if checkpoint_due(step, PLAN, every)] == expected


def test_trainer_state_round_trips_and_refuses_another_run_shape():
    state = TrainerState(4, {"step": 4, "train_loss": 1.5}, run_shape(PLAN, world_size=2))

    assert TrainerState.from_json(state.to_json()) == state
    state.check_fits(PLAN, world_size=2)
    with pytest.raises(ValueError, match="shaped"):
        state.check_fits(PLAN, world_size=4)
    with pytest.raises(ValueError, match="shaped"):
        state.check_fits(StepPlan(2, 6, n_epochs=4), world_size=2)  # another LR schedule


def test_rng_state_round_trips_through_a_file(tmp_path):
    import torch

    from training.checkpoints import rng_state, set_rng_state

    torch.save(rng_state(), tmp_path / "rank-0.pt")
    drawn = torch.rand(4)
    set_rng_state(torch.load(tmp_path / "rank-0.pt", weights_only=True))
    assert torch.equal(torch.rand(4), drawn)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (None, False),
        (b'{"action": "pause"}', True),
        (b'{"action": "resume"}', False),
        (b"[]", False),
        (b"not json", False),
    ],
)
def test_wants_pause(body, expected):
    assert wants_pause(body) is expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_pause_watch_reads_at_most_once_per_interval_and_remembers_a_pause():
    clock, bodies, reads = FakeClock(), [None, None, b'{"action": "pause"}'], []

    def read():
        reads.append(clock.now)
        return bodies[len(reads) - 1]

    watch = PauseWatch(read, interval_s=1.0, clock=clock)

    assert watch.requested() is False  # first step: one read
    clock.now += 0.4
    assert watch.requested() is False  # within the second: no read
    clock.now += 0.7
    assert watch.requested() is False  # second read: still nothing
    clock.now += 1.0
    assert watch.requested() is True  # third read sees the pause
    clock.now += 5.0
    assert watch.requested() is True  # and it stays requested without reading again
    assert reads == [50.0, 51.1, 52.1]


def test_pause_watch_trains_on_when_the_control_object_cannot_be_read():
    clock = FakeClock()
    outcomes = iter([OSError("S3 away"), b'{"action": "pause"}'])

    def read():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    watch = PauseWatch(read, clock=clock)
    assert watch.requested() is False
    clock.now += 1.0
    assert watch.requested() is True


def test_any_rank_without_a_process_group_is_the_flag_itself():
    assert any_rank(True) is True and any_rank(False) is False


def test_ray_train_snapshot_name_is_ray_trains():
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    assert RAY_TRAIN_SNAPSHOT == CHECKPOINT_MANAGER_SNAPSHOT_FILENAME


class FakeS3:
    """The two calls ``resumed_step`` makes, answered as boto3 answers them."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def head_object(self, Bucket: str, Key: str) -> dict:  # noqa: N803 - boto3's names
        from botocore.exceptions import ClientError

        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "404"}}, "HeadObject")
        return {}

    def get_object(self, Bucket: str, Key: str) -> dict:  # noqa: N803
        return {"Body": io.BytesIO(self.objects[Key])}


def test_resumed_step_reads_the_checkpoint_and_fails_fast_on_a_wrong_key():
    state = TrainerState(12, None, run_shape(PLAN, world_size=2))
    s3 = FakeS3({"jobs/j/checkpoints/step-00000012/trainer_state.json": state.to_json().encode()})
    spec = TrainingSpec.model_validate(SPEC)

    assert resumed_step(spec, s3) is None
    assert resumed_step(resume(spec, "jobs/j/checkpoints/step-00000012/"), s3) == 12
    assert resumed_step(resume(spec, "jobs/j/checkpoints/step-00000012"), s3) == 12
    with pytest.raises(FileNotFoundError, match="is no checkpoint"):
        resumed_step(resume(spec, "jobs/j/checkpoints/step-00000013/"), s3)


def test_started_message_says_where_a_resumed_run_goes_on():
    spec = TrainingSpec.model_validate(SPEC)
    assert started_message(spec, 12, None) == "Training started: 12 examples, 3 epochs"
    assert started_message(spec, 12, 4) == "Training resumed after step 4: 12 examples, 3 epochs"


def resume(spec: TrainingSpec, key: str) -> TrainingSpec:
    return spec.model_copy(update={"resume_from": key})


SPEC = {
    "job_id": "j",
    "base_model_id": "tiny",
    "base_model_path": "/models/tiny",
    "training_file_key": "files/f",
    "model_key": "tiny-j",
    "hyperparameters": {
        "n_epochs": 3,
        "batch_size": 4,
        "learning_rate": 0.01,
        "max_seq_length": 1024,
        "lora_r": 8,
        "lora_alpha": 16,
        "num_workers": 2,
    },
    "seed": 0,
    "s3": S3Location(endpoint_url="http://127.0.0.1:1", bucket="b").model_dump(),
}
