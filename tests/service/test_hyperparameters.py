"""The ``auto`` rule and the limits of hyperparameters (the rule is in README.md)."""

from __future__ import annotations

import pytest

from contract.hyperparameters import Hyperparameters
from service.jobs.hyperparameters import (
    DPO_LEARNING_RATE,
    FULL_LEARNING_RATE,
    LORA_LEARNING_RATE,
    Limits,
    OutOfLimits,
    check_limits,
    resolve,
)
from service.jobs.protocol import DpoHyperparameters, SupervisedHyperparameters


def limits(workers: int = 2, **changes) -> Limits:
    values = dict(num_workers=workers, max_workers=8, zero_stage=2, max_seq_length=1024,
                  max_lora_rank=16)
    return Limits(**{**values, **changes})


@pytest.mark.parametrize("requested, n, workers, expected", [
    ({}, 10, 2, (10, 2, 1.0)),
    ({}, 50, 2, (3, 2, 1.0)),
    ({}, 1000, 2, (3, 16 // 2, 1.0)),
    ({"n_epochs": 1, "batch_size": 3, "learning_rate_multiplier": 0.5}, 40, 2, (1, 4, 0.5)),
    ({"n_epochs": "auto", "batch_size": "auto"}, 300, 1, (3, 4, 1.0)),
    ({"num_workers": 4}, 300, 2, (3, 4, 1.0)),
])
def test_openai_three_follow_the_documented_rule(requested, n, workers, expected):
    r = resolve(requested, n, limits(workers))
    assert (r.n_epochs, r.batch_size, r.learning_rate_multiplier) == expected
    assert r.learning_rate == pytest.approx(LORA_LEARNING_RATE * expected[2])
    assert r.openai_dict() == dict(zip(("n_epochs", "batch_size", "learning_rate_multiplier"),
                                   expected, strict=True))


@pytest.mark.parametrize("n, expected", [
    (20, dict(lora_r=8, lora_alpha=16, lora_dropout=0.0)),
    (200, dict(lora_r=16, lora_alpha=32, lora_dropout=0.0)),
    (5000, dict(lora_r=16, lora_alpha=32, lora_dropout=0.05)),
])
def test_auto_lora_grows_with_the_data(n, expected):
    r = resolve({}, n, limits())
    assert {k: getattr(r, k) for k in expected} == expected
    assert r.lora_target_modules == "all-linear"
    assert (r.lr_scheduler, r.warmup_ratio, r.packing, r.max_seq_length) == (
        "linear", 0.1, True, 1024)
    assert (r.zero_stage, r.gradient_checkpointing, r.num_workers) == (2, False, 2)


def test_auto_rank_never_exceeds_what_serving_accepts():
    assert resolve({}, 500, limits(max_lora_rank=8)).lora_r == 8


def test_explicit_knobs_are_kept():
    requested = dict(lora_r=4, lora_alpha=8, lora_dropout=0.1, lora_target_modules=["q_proj"],
                     lr_scheduler="cosine", warmup_ratio=0.0, max_seq_length=256,
                     packing=False, zero_stage=3, gradient_checkpointing=True, num_workers=1)
    r = resolve(requested, 100, limits())
    assert {k: getattr(r, k) for k in requested} == requested
    assert r.batch_size == 1  # a multiple of the one worker asked for
    assert r.method_dict()["lora_target_modules"] == ["q_proj"]


def test_method_sets_the_base_learning_rate_and_dpo_beta():
    dpo = resolve({}, 100, limits(), method="dpo")
    assert dpo.learning_rate == pytest.approx(DPO_LEARNING_RATE)
    assert dpo.method_dict()["beta"] == 0.1
    assert resolve({"beta": 0.5}, 100, limits(), method="dpo").beta == 0.5
    assert "beta" not in resolve({}, 100, limits()).method_dict()
    full = resolve({"full_finetune": True}, 100, limits())
    assert full.learning_rate == pytest.approx(FULL_LEARNING_RATE)


@pytest.mark.parametrize("requested, param", [
    ({"lora_r": 32}, "lora_r"),
    ({"num_workers": 9}, "num_workers"),
    ({"max_seq_length": 2048}, "max_seq_length"),
])
def test_requests_beyond_the_deployment_are_refused(requested, param):
    with pytest.raises(OutOfLimits) as e:
        check_limits(requested, limits())
    assert e.value.param == param


def test_full_finetune_is_not_bound_by_the_serving_rank():
    check_limits({"lora_r": 32, "full_finetune": True}, limits())


def test_a_request_takes_every_knob_of_the_contract_and_nothing_else():
    """A knob added to ``contract.hyperparameters`` fails here until users can set it."""
    settable = set(Hyperparameters.model_fields) - {"learning_rate"}  # derived, not set
    assert set(DpoHyperparameters.model_fields) == settable
    assert set(SupervisedHyperparameters.model_fields) == settable - {"beta"}
    for knob in ("n_epochs", "lora_r", "warmup_ratio"):
        auto = resolve({}, 100, limits())
        assert SupervisedHyperparameters.model_validate({knob: getattr(auto, knob)})
