"""DPO: preference rows, the sigmoid loss, and a LoRA policy pulling away from its base."""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import pytest
import torch

import training.dpo
from training.chat_template import IGNORE_INDEX, TokenizedExample
from training.dpo import (
    PreferenceExample,
    batch_logps,
    dpo_loss,
    preference_batch,
    preference_step,
    reference_logps,
    tokenize_preference,
)

END = "<|im_end|>"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def line(prompt: list[dict], preferred: str, rejected: str) -> dict:
    return {
        "input": {"messages": prompt},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def trained_text(tokenizer, row: TokenizedExample) -> str:
    return tokenizer.decode([t for t in row.labels if t != IGNORE_INDEX])


def prompt_ids(row: TokenizedExample) -> list[int]:
    first = next(i for i, label in enumerate(row.labels) if label != IGNORE_INDEX)
    return row.input_ids[:first]


def test_docstring_examples_hold(tokenizer):
    globs = {"tok": tokenizer, "torch": torch, "math": math}
    assert doctest.testmod(training.dpo, extraglobs=globs).failed == 0


# --- tokenize_preference -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "preferred", "rejected"),
    [
        ([user("What is the capital of France?")], "Paris.", "Berlin."),
        (
            # The earlier assistant turn is context: weight 1 in the file, untrained here.
            [
                {"role": "system", "content": "Extract the name as JSON."},
                user("Alice, 30"),
                {"role": "assistant", "content": "The quick brown fox.", "weight": 1},
                user("Again, as JSON."),
            ],
            '{"name": "Alice"}',
            "Alice",
        ),
    ],
)
def test_only_the_output_turn_is_trained(tokenizer, prompt, preferred, rejected):
    ex = tokenize_preference(tokenizer, line(prompt, preferred, rejected), 512)

    assert trained_text(tokenizer, ex.chosen) == preferred + END
    assert trained_text(tokenizer, ex.rejected) == rejected + END
    assert prompt_ids(ex.chosen) == prompt_ids(ex.rejected)
    assert ex.chosen.input_ids[-1] == ex.rejected.input_ids[-1]  # ChatML's trailing "\n"
    assert ex.chosen.labels[-1] == IGNORE_INDEX


LONG_PROMPT = [
    {"role": "system", "content": "You are a helpful assistant. " * 4},
    user("What is the capital of France?"),
]
PREFERRED = "The capital of France is Paris."
REJECTED = "Berlin."


@pytest.mark.parametrize(
    "case",
    [
        "fits",  # nothing cut
        "longer row minus 5",  # the prompt loses 5 tokens from its start in both rows
        "longer answer minus 2",  # the prompt keeps one token; the longer answer is cut
    ],
)
def test_truncation_keeps_the_prompt_shared_and_cuts_it_from_the_start(
    tokenizer, case
):
    full = tokenize_preference(tokenizer, line(LONG_PROMPT, PREFERRED, REJECTED), 10_000)
    prompt = prompt_ids(full.chosen)
    answer = full.chosen.num_tokens - len(prompt)
    limit = {
        "fits": full.chosen.num_tokens,
        "longer row minus 5": full.chosen.num_tokens - 5,
        "longer answer minus 2": answer - 2,
    }[case]

    ex = tokenize_preference(tokenizer, line(LONG_PROMPT, PREFERRED, REJECTED), limit)

    assert ex.chosen.num_tokens == limit
    assert prompt_ids(ex.chosen) == prompt_ids(ex.rejected)
    kept = prompt_ids(ex.chosen)
    assert kept == prompt[len(prompt) - len(kept):]  # the prompt's tail survives
    assert trained_text(tokenizer, ex.rejected) == REJECTED + END
    if case == "longer answer minus 2":
        assert len(kept) == 1
        assert (PREFERRED + END).startswith(trained_text(tokenizer, ex.chosen))
        assert trained_text(tokenizer, ex.chosen) != PREFERRED + END
    else:
        assert trained_text(tokenizer, ex.chosen) == PREFERRED + END


# --- dpo_loss -----------------------------------------------------------------------------


def test_dpo_loss_by_hand():
    beta = 0.5
    policy_chosen = torch.tensor([-1.0, -4.0])
    policy_rejected = torch.tensor([-3.0, -2.0])
    ref_chosen = torch.tensor([-2.0, -3.0])
    ref_rejected = torch.tensor([-2.0, -3.0])
    # Pair 0: rewards +0.5 and -0.5, margin 1. Pair 1: rewards -0.5 and +0.5, margin -1.

    loss, stats = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)

    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats.loss == pytest.approx(expected, abs=1e-6)
    assert stats.reward_margin == 0.0
    assert stats.reward_accuracy == 0.5
    assert stats.chosen_reward == 0.0
    assert stats.rejected_reward == 0.0
    assert stats.logp_margin == 0.0  # (2 + -2) / 2


def test_dpo_loss_single_pair():
    loss, stats = dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
        beta=0.1,
    )

    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.2)), abs=1e-6)
    assert stats.chosen_reward == pytest.approx(0.1)
    assert stats.rejected_reward == pytest.approx(-0.1)
    assert stats.reward_margin == pytest.approx(0.2)
    assert stats.reward_accuracy == 1.0
    assert stats.logp_margin == 2.0


# --- preference_step on a tiny Llama with LoRA ---------------------------------------------


PAIRS = [
    ([user("What is the capital of France?")], "The capital of France is Paris.", "Berlin."),
    ([user("Extract the name as JSON.")], '{"name": "Alice"}', "Alice, 30, Berlin"),
    ([user("Hello!")], "Hello! How can I help you today?", "The quick brown fox."),
    ([user("What is the capital?")], "Paris.", "The lazy dog."),
]


@pytest.fixture
def examples(tokenizer) -> list[PreferenceExample]:
    return [tokenize_preference(tokenizer, line(*pair), 128) for pair in PAIRS]


def lora_model(model_dir: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                        task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    model.train()
    return model


def base_model(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


class Engine:
    """What the loop hands over: a DeepSpeed engine, callable, its PeftModel on ``module``."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.device = torch.device("cpu")

    def __call__(self, **inputs):
        return self.module(**inputs)


def test_at_start_policy_is_reference_and_the_loss_is_log_2(tiny_model_dir, examples, tokenizer):
    model = lora_model(tiny_model_dir)

    loss, stats = preference_step(model, examples, tokenizer.pad_token_id, beta=0.1)

    assert loss.item() == torch.log(torch.tensor(2.0)).item()
    assert (stats.reward_margin, stats.chosen_reward, stats.rejected_reward) == (0.0, 0.0, 0.0)
    assert stats.logp_margin != 0.0  # the random policy does prefer one answer already


def test_an_engine_wrapping_the_peft_model_gives_the_same_step(
    tiny_model_dir, examples, tokenizer
):
    model = lora_model(tiny_model_dir)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)  # policy != reference, so the loss depends on both

    direct, direct_stats = preference_step(model, examples, tokenizer.pad_token_id, beta=0.1)
    wrapped, wrapped_stats = preference_step(
        Engine(model), examples, tokenizer.pad_token_id, beta=0.1
    )

    assert not hasattr(Engine(model), "disable_adapter")
    assert wrapped.item() == direct.item() != math.log(2)
    assert wrapped_stats == direct_stats


def test_training_widens_the_preference_margin_and_leaves_the_base_alone(
    tiny_model_dir, examples, tokenizer
):
    model = lora_model(tiny_model_dir)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)

    history = []
    for _ in range(15):
        loss, stats = preference_step(model, examples, tokenizer.pad_token_id, beta=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(stats)

    first, last = history[0], history[-1]
    assert last.logp_margin > first.logp_margin + 5.0
    assert last.reward_margin > 0.5
    assert last.reward_accuracy == 1.0
    assert last.loss < first.loss
    assert frozen and all(
        torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen
    )
    assert any(not torch.equal(p, lora[n]) for n, p in model.named_parameters() if n in lora)

    # The reference is still the base model as saved, not the trained policy.
    batch = preference_batch(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        base = batch_logps(base_model(tiny_model_dir), batch)
        policy = batch_logps(model, batch)
    reference = reference_logps(model, batch)
    torch.testing.assert_close(reference, base, rtol=0, atol=1e-5)
    assert (policy - base).abs().max() > 1.0
    assert not reference.requires_grad
