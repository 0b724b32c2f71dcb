"""The contract both sides of every channel read: keys, events, hyperparameters, the spec."""

from __future__ import annotations

import doctest
import json

import pytest
from pydantic import ValidationError

import contract.bucket
import contract.events
import contract.loss_spans
from contract import bucket
from contract.events import (
    BaselineData,
    BaselineEvent,
    CheckpointData,
    CheckpointEvent,
    ErrorData,
    ErrorEvent,
    MessageEvent,
    MetricsData,
    MetricsEvent,
    PausedData,
    PausedEvent,
    RestartData,
    RestartEvent,
    ResultData,
    ResultEvent,
    encode_batch,
    encode_event,
    parse_event,
)
from contract.hyperparameters import DEFAULTS, DPO_BETA, Hyperparameters
from contract.spec import S3Location, TrainingSpec


@pytest.mark.parametrize("module", [contract.bucket, contract.events, contract.loss_spans])
def test_docstring_examples_hold(module):
    assert doctest.testmod(module).failed == 0


def test_every_key_of_one_job_lives_under_its_prefix():
    job = "ftjob-1"
    keys = [bucket.spec_key(job), bucket.control_key(job), bucket.event_batch_key(job, 0),
            bucket.results_key(job), bucket.checkpoint_key(job, 3),
            bucket.ray_train_snapshot_key(job)]
    assert all(k.startswith(bucket.job_prefix(job)) for k in keys)
    assert len(set(keys)) == len(keys)
    assert bucket.event_batch_seq(bucket.event_batch_key(job, 41), job) == 41
    assert bucket.event_batch_seq(bucket.event_batch_key("ftjob-2", 41), job) is None


def test_adapter_names_round_trip():
    name = bucket.checkpoint_model_key("m-1", 12)
    assert bucket.model_key_of(bucket.adapter_prefix(name)) == name
    assert bucket.deleted_marker_key(name).startswith(bucket.adapter_prefix(name))


EVENTS = [
    MessageEvent(created_at=1, message="Training started"),
    MetricsEvent(created_at=2, message="Step 1/4", data=MetricsData(
        step=1, total_steps=4, train_loss=1.5, train_mean_token_accuracy=0.25)),
    BaselineEvent(created_at=2, message="Validation loss before training: 2.1000",
                  data=BaselineData(full_valid_loss=2.1, full_valid_mean_token_accuracy=0.3)),
    CheckpointEvent(created_at=3, message="Checkpoint", data=CheckpointData(
        step=2, checkpoint_key="jobs/j/checkpoints/step-00000002/",
        adapter_key="models/m-step-00000002/", model_key="m-step-00000002",
        metrics={"step": 2})),
    CheckpointEvent(created_at=3, message="Checkpoint (full)", data=CheckpointData(
        step=2, checkpoint_key="jobs/j/checkpoints/step-00000002/", adapter_key=None,
        model_key=None)),
    RestartEvent(created_at=4, message="Restarted", data=RestartData(step=2)),
    PausedEvent(created_at=5, message="Paused", data=PausedData(
        step=3, checkpoint_key="jobs/j/checkpoints/step-00000003/")),
    ResultEvent(created_at=6, message="Done", data=ResultData(trained_tokens=120,
                                                              model_key="m")),
    ErrorEvent(created_at=7, message="Bad line 3", data=ErrorData(
        code="invalid_training_file", message="Line 3 is not JSON", param="training_file")),
]


@pytest.mark.parametrize("event", EVENTS, ids=[f"{e.type}-{i}" for i, e in enumerate(EVENTS)])
def test_each_event_kind_reads_back_as_written(event):
    line = encode_event(event)
    assert b"\n" not in line
    assert parse_event(line) == event


def test_a_batch_is_one_line_per_event():
    lines = encode_batch(EVENTS).decode().splitlines()
    assert [parse_event(line) for line in lines] == EVENTS


@pytest.mark.parametrize(("type_", "data"), [
    ("metrics", {"total_steps": 4}),             # no step
    ("baseline", {"full_valid_mean_token_accuracy": 0.3}),  # no full_valid_loss
    ("checkpoint", {"step": 1}),                # no checkpoint_key
    ("result", {"trained_tokens": 3}),          # no model_key
    ("error", {"message": "x"}),                # no code
    ("message", {"step": 1}),                   # a message carries no data
    ("unknown", None),
])
def test_an_event_missing_what_its_kind_needs_is_refused(type_, data):
    with pytest.raises(ValidationError):
        parse_event(json.dumps({"created_at": 1, "type": type_, "message": "m", "data": data}))


def resolved(**changes) -> Hyperparameters:
    values = dict(n_epochs=3, batch_size=2, learning_rate=5e-4, lora_r=8, lora_alpha=16,
                  max_seq_length=512, num_workers=2)
    return Hyperparameters(**{**values, **changes})


def test_fixed_defaults_are_defined_once_and_data_dependent_ones_are_required():
    h = resolved()
    assert {k: getattr(h, k) for k in DEFAULTS} == DEFAULTS
    assert "n_epochs" not in DEFAULTS and "learning_rate" not in DEFAULTS
    with pytest.raises(ValidationError):
        Hyperparameters(n_epochs=3)


@pytest.mark.parametrize("change", [
    {"n_epochs": 0}, {"batch_size": 257}, {"learning_rate": float("inf")},
    {"learning_rate_multiplier": float("nan")}, {"lora_r": 0}, {"zero_stage": 1},
    {"warmup_ratio": 0.6}, {"lr_scheduler": "constant"}, {"unknown_knob": 1},
])
def test_hyperparameters_out_of_bounds_are_refused(change):
    with pytest.raises(ValidationError):
        resolved(**change)


def test_the_job_shows_every_knob_but_the_derived_rate():
    shown = resolved().method_dict()
    assert "learning_rate" not in shown and "beta" not in shown
    assert set(shown) == set(Hyperparameters.model_fields) - {"learning_rate", "beta"}
    assert resolved(beta=0.1).method_dict()["beta"] == 0.1
    assert resolved().openai_dict() == {"batch_size": 2, "learning_rate_multiplier": 1.0,
                                        "n_epochs": 3}


def test_the_spec_travels_as_json_unchanged():
    spec = TrainingSpec(job_id="ftjob-1", base_model_id="b", base_model_path="/m",
                        training_file_key=bucket.file_key("file-1"), model_key="m",
                        hyperparameters=resolved(), seed=7,
                        s3=S3Location(endpoint_url="http://127.0.0.1:8333", bucket="openft"))
    assert TrainingSpec.model_validate_json(spec.model_dump_json()) == spec
    assert spec.adapter_prefix == bucket.adapter_prefix("m")
    with pytest.raises(ValidationError):
        TrainingSpec.model_validate({**spec.model_dump(), "n_epochs": 3})


def test_a_dpo_spec_names_its_beta():
    fields = dict(job_id="ftjob-1", base_model_id="b", base_model_path="/m",
                  training_file_key=bucket.file_key("file-1"), model_key="m", seed=7,
                  method="dpo", s3=S3Location(endpoint_url="http://127.0.0.1:8333",
                                              bucket="openft"))
    with pytest.raises(ValidationError, match="beta"):
        TrainingSpec(**fields, hyperparameters=resolved())
    assert TrainingSpec(**fields, hyperparameters=resolved(beta=DPO_BETA)).method == "dpo"
