"""The ``auto`` rule and the limits of hyperparameters (the rule is in README.md)."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import service.jobs.hyperparameters
from contract.hyperparameters import Hyperparameters
from service.jobs.capacity import ClusterView, ModelFacts, WorkerShape
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
from service.settings import Settings

GIB = 1 << 30
TINY = ModelFacts(hidden=128, layers=2, intermediate=256, vocab=512, heads=2, kv_heads=2,
                  tied=True, context=1024)
LLAMA_8B = ModelFacts(hidden=4096, layers=32, intermediate=14336, vocab=128256, heads=32,
                      kv_heads=8, tied=False, context=131072)


def limits(workers: int = 2, **changes) -> Limits:
    values = dict(num_workers=workers, max_workers=8, zero_stage=None, max_seq_length=1024,
                  max_lora_rank=16)
    return Limits(**{**values, **changes})


def gpus(slots: int, gib: float = 80) -> ClusterView:
    return ClusterView(True, WorkerShape(1, 1), slots, gib * GIB, True)


def test_the_examples_in_the_docstrings_hold():
    assert doctest.testmod(service.jobs.hyperparameters).failed == 0


@pytest.mark.parametrize("requested, n, workers, expected", [
    ({}, 10, 2, (10, 1, 1.0)),
    ({}, 50, 2, (3, 1, 1.0)),
    ({}, 1000, 2, (3, 8, 1.0)),
    ({"n_epochs": 1, "batch_size": 3, "learning_rate_multiplier": 0.5}, 40, 2, (1, 3, 0.5)),
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
    assert (r.zero_stage, r.gradient_checkpointing) == (2, False)


def test_auto_rank_never_exceeds_what_serving_accepts():
    assert resolve({}, 500, limits(max_lora_rank=8)).lora_r == 8


def test_explicit_knobs_are_kept():
    requested = dict(lora_r=4, lora_alpha=8, lora_dropout=0.1, lora_target_modules=["q_proj"],
                     lr_scheduler="cosine", warmup_ratio=0.0, max_seq_length=256,
                     packing=False, zero_stage=3, gradient_checkpointing=True, num_workers=1)
    r = resolve(requested, 100, limits(), longest_example=900, model=LLAMA_8B, cluster=gpus(1, 16))
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


@pytest.mark.parametrize("requested, n, slots, expected", [
    ({}, 1000, 32, (8, 8)),  # batch 8 on 32 GPUs: 8 workers, not 32 examples
    ({}, 1000, 3, (8, 2)),  # the most workers that split the batch evenly and fit
    ({"batch_size": 12}, 100, 32, (12, 6)),  # up to training_num_workers (8): 6 divides 12
    ({"batch_size": 7}, 100, 32, (7, 7)),
    ({"batch_size": 7}, 100, 4, (7, 1)),  # never rounded up to 8
    ({"num_workers": 4}, 1000, 32, (8, 4)),
    ({"num_workers": 3}, 1000, 32, (6, 3)),  # auto batch: the multiple at or below 8
    ({"num_workers": 5}, 100, 32, (5, 5)),  # at least one example per worker
    ({"batch_size": 6, "num_workers": 3}, 100, 32, (6, 3)),
    ({}, 1000, 0, (8, 1)),  # nothing free: one worker, waiting for room
])
def test_batch_size_and_workers_split_evenly_and_never_oversample(requested, n, slots,
                                                                 expected):
    r = resolve(requested, n, limits(8), cluster=gpus(slots))
    assert (r.batch_size, r.num_workers) == expected
    assert r.batch_size % r.num_workers == 0


@pytest.mark.parametrize("longest, given, expected", [
    (None, None, 1024),  # unknown: the model's context
    (1, None, 64),
    (300, None, 320),  # rounded up to a multiple of 64
    (5000, None, 1024),  # capped: longer examples are truncated
    (300, 128, 128),  # explicit kept, even below the longest example
])
def test_auto_max_seq_length_follows_the_longest_example(longest, given, expected):
    requested = {} if given is None else {"max_seq_length": given}
    assert resolve(requested, 100, limits(), longest_example=longest).max_seq_length == expected


def test_the_context_cap_is_the_smallest_of_model_config_and_served_length(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, default_base_model=False,
                        base_models={"short": {"volume_path": str(tmp_path), "max_model_len": 512},
                                     "served": str(tmp_path)})
    assert settings.serving.max_model_len == 1024
    assert Limits.of(settings, "short", TINY).max_seq_length == 512  # the model's serving
    assert Limits.of(settings, "served", TINY).max_seq_length == 1024
    small = ModelFacts(**{**TINY.__dict__, "context": 256})
    assert Limits.of(settings, "served", small).max_seq_length == 256  # config.json's
    with pytest.raises(OutOfLimits) as e:
        check_limits({"max_seq_length": 600}, Limits.of(settings, "short", TINY))
    assert e.value.param == "max_seq_length"


@pytest.mark.parametrize("requested, model, cluster, expected", [
    ({}, TINY, gpus(2, 24), (2, False)),
    ({}, LLAMA_8B, gpus(8, 80), (2, False)),  # LoRA: 15 GiB of weights and activations fit
    ({}, LLAMA_8B, gpus(1, 24), (2, True)),  # weights fit, activations of 8k tokens do not
    ({"full_finetune": True}, LLAMA_8B, gpus(2, 80), (3, True)),  # 16 bytes a parameter
    ({"zero_stage": 3}, LLAMA_8B, gpus(8, 80), (3, False)),  # explicit kept
    ({"gradient_checkpointing": True}, TINY, gpus(2), (2, True)),
    ({"zero_stage": 2, "gradient_checkpointing": False}, LLAMA_8B, gpus(1, 24), (2, False)),
])
def test_auto_zero_stage_and_checkpointing_follow_model_size_and_memory(requested, model,
                                                                        cluster, expected):
    r = resolve(requested, 1000, limits(8), longest_example=4000, model=model, cluster=cluster)
    assert (r.zero_stage, r.gradient_checkpointing) == expected


def test_the_operators_zero_stage_wins_over_the_rule_but_not_over_the_job():
    assert resolve({}, 100, limits(zero_stage=3), model=TINY, cluster=gpus(2)).zero_stage == 3
    assert resolve({"zero_stage": 2}, 100, limits(zero_stage=3)).zero_stage == 2


@pytest.mark.parametrize("requested, param", [
    ({"lora_r": 32}, "lora_r"),
    ({"num_workers": 9}, "num_workers"),
    ({"max_seq_length": 2048}, "max_seq_length"),
    ({"batch_size": 6, "num_workers": 4}, "batch_size"),
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
