"""Data shaping of a run: step plan, per-rank shards, padding, loss and LR schedule."""

from __future__ import annotations

import doctest
from collections import Counter

import pytest

import training.data
import training.events
import training.loop
from training.chat_template import TokenizedExample
from training.data import StepPlan, epoch_indices, micro_batch_size, plan_steps
from training.loop import deepspeed_config, lr_factor, shard, warmup_steps
from training.objectives import Supervised
from training.packing import collate


@pytest.mark.parametrize("module", [training.data, training.events, training.loop])
def test_docstring_examples_hold(module):
    assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize(
    ("num_examples", "world", "batch", "epochs", "per_step", "per_epoch", "total_steps"),
    [
        (12, 2, 4, 5, 2, 6, 15),  # the integration test's shape
        (12, 1, 4, 1, 4, 12, 3),
        (13, 2, 4, 1, 2, 8, 4),  # 7 per rank, padded to a multiple of 2
        (5, 2, 1, 3, 1, 3, 9),  # batch smaller than the world: one example per rank
        (3, 4, 8, 1, 2, 2, 1),  # fewer examples than ranks: repeats fill the step
    ],
)
def test_plan_steps(num_examples, world, batch, epochs, per_step, per_epoch, total_steps):
    plan = plan_steps(num_examples, world, batch, epochs)

    assert (plan.examples_per_rank_step, plan.examples_per_rank_epoch) == (per_step, per_epoch)
    assert plan.total_steps == total_steps
    assert plan.examples_per_rank_epoch % plan.examples_per_rank_step == 0


@pytest.mark.parametrize(
    ("per_step", "max_example_tokens", "micro"),
    [
        (8, 1024, 8),  # 8k tokens: the whole step in one forward
        (64, 1024, 8),  # a bigger batch: more forwards, not more memory
        (12, 2048, 4),
        (10, 2048, 2),  # 4 would fit but does not divide 10
        (7, 1024, 7),
        (7, 2048, 1),  # a prime: one example per forward
        (4, 32768, 1),  # longer than the budget: still one example
    ],
)
def test_micro_batches_hold_at_most_8k_tokens_and_divide_the_step(
    per_step, max_example_tokens, micro
):
    assert micro_batch_size(per_step, max_example_tokens) == micro
    assert per_step % micro == 0
    assert micro * max_example_tokens <= 8192 or micro == 1


@pytest.mark.parametrize(("num_examples", "world"), [(12, 2), (13, 2), (5, 3), (3, 4), (7, 1)])
def test_shards_cover_every_example_once_before_any_repeat(num_examples, world):
    plan = plan_steps(num_examples, world, batch_size=2 * world, n_epochs=1)
    shards = [epoch_indices(num_examples, plan, 7, 0, rank, world) for rank in range(world)]

    assert {len(s) for s in shards} == {plan.examples_per_rank_epoch}
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


@pytest.mark.parametrize(
    ("stage", "per_step", "micro", "world", "bf16", "accumulation"),
    [(2, 2, None, 2, False, 1), (3, 4, 1, 1, True, 4), (2, 12, 4, 2, False, 3)],
)
def test_deepspeed_config(stage, per_step, micro, world, bf16, accumulation):
    config = deepspeed_config(stage, per_step, world, bf16, micro_batch=micro)

    assert config["train_batch_size"] == per_step * world
    assert config["train_micro_batch_size_per_gpu"] == (micro or per_step)
    assert config["gradient_accumulation_steps"] == accumulation
    assert config["zero_optimization"] == {"stage": stage}
    assert config["bf16"] == {"enabled": bf16}
    assert config["zero_allow_untested_optimizer"] is True


def test_deepspeed_config_refuses_a_micro_batch_that_does_not_divide_the_step():
    with pytest.raises(ValueError, match="does not divide"):
        deepspeed_config(2, examples_per_step=6, world_size=1, bf16=False, micro_batch=4)


def test_step_plan_is_plain_data():
    assert StepPlan(2, 6, 5).steps_per_epoch == 3
