"""Data shaping of a run: step plan, per-rank shards, padding, loss and LR schedule."""

from __future__ import annotations

import doctest
from collections import Counter

import pytest
import torch

import training.data
import training.events
import training.loop
from training.chat_template import TokenizedExample
from training.data import StepPlan, epoch_indices, plan_steps
from training.loop import deepspeed_config, lr_factor, shard, warmup_steps
from training.objectives import Supervised
from training.packing import collate, weighted_token_loss


@pytest.mark.parametrize("module", [training.data, training.events, training.loop])
def test_docstring_examples_hold(module):
    assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize(
    ("num_examples", "world", "batch", "epochs", "grad_accum", "micro", "total_steps"),
    [
        (12, 2, 4, 5, 2, 6, 15),  # the integration test's shape
        (12, 1, 4, 1, 4, 12, 3),
        (13, 2, 4, 1, 2, 8, 4),  # 7 per rank, padded to a multiple of 2
        (5, 2, 1, 3, 1, 3, 9),  # batch smaller than the world: one example per rank
        (3, 4, 8, 1, 2, 2, 1),  # fewer examples than ranks: repeats fill the step
    ],
)
def test_plan_steps(num_examples, world, batch, epochs, grad_accum, micro, total_steps):
    plan = plan_steps(num_examples, world, batch, epochs)

    assert (plan.grad_accum, plan.micro_steps_per_epoch) == (grad_accum, micro)
    assert plan.total_steps == total_steps
    assert plan.micro_steps_per_epoch % plan.grad_accum == 0


@pytest.mark.parametrize(("num_examples", "world"), [(12, 2), (13, 2), (5, 3), (3, 4), (7, 1)])
def test_shards_cover_every_example_once_before_any_repeat(num_examples, world):
    plan = plan_steps(num_examples, world, batch_size=2 * world, n_epochs=1)
    shards = [epoch_indices(num_examples, plan, 7, 0, rank, world) for rank in range(world)]

    assert {len(s) for s in shards} == {plan.micro_steps_per_epoch}
    counts = Counter(i for s in shards for i in s)
    assert set(counts) == set(range(num_examples))
    assert max(counts.values()) - min(counts.values()) <= max(1, world // num_examples + 1)


def test_epochs_are_shuffled_differently_but_reproducibly():
    plan = plan_steps(12, 2, 4, 2)

    e0 = epoch_indices(12, plan, seed=1, epoch=0, rank=0, world_size=2)
    e1 = epoch_indices(12, plan, seed=1, epoch=1, rank=0, world_size=2)

    assert e0 != e1
    assert e0 == epoch_indices(12, plan, seed=1, epoch=0, rank=0, world_size=2)


def test_collate_pads_with_no_loss():
    batch = collate([TokenizedExample([1, 2], [-100, 2]), TokenizedExample([3], [3])], pad_id=9)

    assert batch["input_ids"].tolist() == [[1, 2], [3, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert batch["labels"].tolist() == [[-100, 2], [3, -100]]


def test_objective_counts_prompt_and_completion_tokens():
    examples = [TokenizedExample([1, 2, 3], [-100, -100, 3]), TokenizedExample([4, 5], [4, 5])]
    objective = Supervised(max_seq_length=8, pad_id=0, packing=True)

    assert sum(map(objective.num_tokens, examples)) == 5


def loss_batch(labels: list[list[int]]) -> dict[str, torch.Tensor]:
    """Labels and per-token weights of one example per row, as build_batch weighs them."""
    weights = [[1.0 / (sum(t != -100 for t in row[1:]) * len(labels)) if t != -100 and i else 0.0
                for i, t in enumerate(row)] for row in labels]
    return {"labels": torch.tensor(labels), "loss_weights": torch.tensor(weights)}


def test_token_loss_counts_only_trained_positions():
    vocab = 4
    # Position i predicts label i + 1; only labels 2 and 3 of the sequence are trained.
    logits = torch.full((1, 4, vocab), -10.0)
    logits[0, 1, 2] = 10.0  # right about token 2
    logits[0, 2, 0] = 10.0  # wrong about token 3

    mean, loss_sum, correct, count = weighted_token_loss(
        logits.requires_grad_(), loss_batch([[-100, -100, 2, 3]]))
    mean = mean.detach()

    assert int(count) == 2 and int(correct) == 1
    assert float(mean) == pytest.approx(float(loss_sum) / 2)
    assert float(mean) > 5  # the wrong guess dominates


def test_token_loss_of_an_example_with_nothing_to_train_is_zero_with_a_graph():
    logits = torch.randn(1, 3, 5, requires_grad=True)
    batch = {"labels": torch.tensor([[-100, -100, -100]]), "loss_weights": torch.zeros(1, 3)}

    mean, _, correct, count = weighted_token_loss(logits, batch)
    value = float(mean.detach())

    assert value == 0.0 and int(count) == 0 and int(correct) == 0
    mean.backward()  # backward must still run on every rank


@pytest.mark.parametrize(
    ("step", "total", "warmup", "expected"),
    [(0, 10, 2, 0.5), (1, 10, 2, 1.0), (2, 10, 2, 1.0), (9, 10, 2, 0.125), (0, 1, 1, 1.0)],
)
def test_lr_factor(step, total, warmup, expected):
    assert lr_factor(step, total, warmup) == pytest.approx(expected)


def test_cosine_decays_from_peak_to_near_zero_after_warmup():
    factors = [lr_factor(s, 20, 2, "cosine") for s in range(20)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert all(a >= b for a, b in zip(factors[2:], factors[3:], strict=False))
    assert 0 < factors[-1] < 0.01


def test_warmup_is_a_share_of_the_steps_and_at_least_one_when_asked():
    assert [warmup_steps(total, 0.1) for total in (1, 10, 25)] == [1, 1, 2]
    assert warmup_steps(100, 0.0) == 0


def test_validation_shards_cover_every_example_once_with_equal_forwards():
    shards = [shard(list(range(7)), rank, 3) for rank in range(3)]
    assert {len(s) for s in shards} == {3}
    assert sorted(i for s in shards for i in s if i is not None) == list(range(7))


@pytest.mark.parametrize(("stage", "accum", "world", "bf16"), [(2, 2, 2, False), (3, 4, 1, True)])
def test_deepspeed_config(stage, accum, world, bf16):
    config = deepspeed_config(stage, accum, world, bf16)

    assert config["train_batch_size"] == accum * world
    assert config["train_micro_batch_size_per_gpu"] == accum  # one forward per step
    assert config["gradient_accumulation_steps"] == 1
    assert config["zero_optimization"] == {"stage": stage}
    assert config["bf16"] == {"enabled": bf16}
    assert config["zero_allow_untested_optimizer"] is True


def test_step_plan_is_plain_data():
    assert StepPlan(2, 6, 5).steps_per_epoch == 3
