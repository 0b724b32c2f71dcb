"""The chunked LM-head loss: the same loss, sums and gradients as full logits, never all
logits at once; and a step split into micro-batches by DeepSpeed trains exactly like one
forward."""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import training.token_loss
from devstack.processes import free_port
from training.chat_template import IGNORE_INDEX, TokenizedExample
from training.packing import build_batch, model_inputs
from training.token_loss import final_hidden_states, sequence_logps, weighted_token_loss

X = IGNORE_INDEX
REPO_ROOT = Path(__file__).resolve().parents[2]
LENGTHS = [12, 9, 7, 5, 3, 2]


def test_docstring_examples_hold():
    assert doctest.testmod(training.token_loss).failed == 0


def sample_examples(vocab_size: int) -> list[TokenizedExample]:
    gen = torch.Generator().manual_seed(0)
    examples = []
    for n in LENGTHS:
        ids = torch.randint(3, vocab_size, (n,), generator=gen).tolist()
        prompt = n // 3 + 1
        examples.append(TokenizedExample(ids, [X] * prompt + ids[prompt:]))
    return examples


def full_logits_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]):
    """The loss as computed before chunking: every position's fp32 logits at once."""
    shift_logits = logits[:, :-1].float()
    labels, weights = batch["labels"][:, 1:], batch["loss_weights"][:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), labels.reshape(-1),
        ignore_index=X, reduction="none").view_as(labels)
    mask = labels != X
    correct = ((shift_logits.argmax(-1) == labels) & mask).sum()
    return (per_token * weights).sum(), per_token.sum(), correct, mask.sum()


def full_logits_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    mask = shift_labels != X
    logps = shift_logits.log_softmax(-1).gather(-1, torch.where(mask, shift_labels, 0)[..., None])
    return (logps.squeeze(-1) * mask).sum(-1)


def load(model_dir: Path, tied: bool = False):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    if not tied:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = AutoConfig.from_pretrained(model_dir, tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def with_lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                            target_modules=["q_proj", "v_proj", "lm_head"],
                                            task_type="CAUSAL_LM"))


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out


@pytest.fixture
def vocab_size(tiny_model_dir) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(tiny_model_dir).vocab_size)


@pytest.fixture
def head_calls(monkeypatch, vocab_size):
    """Positions per LM-head call, with chunks of 4 positions."""
    monkeypatch.setattr(training.token_loss, "CHUNK_LOGITS", 4 * vocab_size)
    return []


def watch_head(model, calls: list[int]) -> None:
    training.token_loss.causal_lm(model).get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: calls.append(args[0].shape[-2] if args[0].dim() > 2
                                            else args[0].shape[0]))


@pytest.mark.parametrize("variant", ["full", "tied", "lora"])
@pytest.mark.parametrize("packing", [True, False])
def test_chunked_loss_sums_and_gradients_match_full_logits(
    tiny_model_dir, vocab_size, head_calls, variant, packing
):
    model = load(tiny_model_dir, tied=variant == "tied")
    model = with_lora(model) if variant == "lora" else model
    examples = sample_examples(vocab_size)
    batch = build_batch(examples, 16, pad_id=0, packing=packing)

    expected = full_logits_loss(model(**model_inputs(batch, "cpu")).logits, batch)
    expected[0].backward()
    expected_grads = grads(model)
    watch_head(model, head_calls)
    got = weighted_token_loss(model, final_hidden_states(model, model_inputs(batch, "cpu")), batch)
    got[0].backward()

    trained = sum(1 for e in examples for label in e.labels[1:] if label != X)
    # The head saw no padding or prompt position, 4 at a time, each twice (recomputed).
    assert sum(head_calls) == 2 * trained and max(head_calls) == 4
    torch.testing.assert_close(got[0], expected[0].detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], expected[1].detach(), rtol=1e-5, atol=1e-5)
    assert (int(got[2]), int(got[3])) == (int(expected[2]), int(expected[3])) != (0, 0)
    got_grads = grads(model)
    assert set(got_grads) == set(expected_grads)
    if variant == "tied":
        assert "model.embed_tokens.weight" in got_grads and "lm_head.weight" not in got_grads
    for name, grad in expected_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_nothing_trained_is_zero_with_a_graph(tiny_model_dir):
    model = load(tiny_model_dir)
    batch = build_batch([TokenizedExample([5, 6, 7], [X, X, X])], 16, pad_id=0, packing=True)

    loss, loss_sum, correct, count = weighted_token_loss(
        model, final_hidden_states(model, model_inputs(batch, "cpu")), batch)

    assert (loss.item(), loss_sum.item(), int(correct), int(count)) == (0.0, 0.0, 0, 0)
    loss.backward()  # backward must still run on every rank


def test_chunked_sequence_logps_match_full_logits(tiny_model_dir, vocab_size, head_calls):
    from training.packing import collate

    model = with_lora(load(tiny_model_dir))
    rows = [*sample_examples(vocab_size)[:3], TokenizedExample([4, 5, 6], [X, X, X])]
    batch = collate(rows, pad_id=0)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    expected = full_logits_logps(model(**inputs).logits, batch["labels"])
    expected.sum().backward()
    expected_grads = grads(model)
    watch_head(model, head_calls)
    got = sequence_logps(model, final_hidden_states(model, inputs), batch["labels"])
    got.sum().backward()

    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-5)
    assert got[-1].item() == 0.0  # a row without labels
    assert max(head_calls) == 4
    for name, grad in grads(model).items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-5)


# --- micro-batches under DeepSpeed -------------------------------------------------------------

ONE_STEP = r"""
import json, sys
import deepspeed, torch, torch.distributed as dist
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from training.chat_template import TokenizedExample
from training.loop import accumulate, deepspeed_config, initialize_deepspeed
from training.objectives import Supervised

model_dir, stage, runs, out = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
examples = [TokenizedExample(*e) for e in json.loads(sys.stdin.read())]
dist.init_process_group("gloo")
results = {}
for micro, packing in runs:
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM",
                   target_modules=["q_proj", "v_proj"]))
    params = [p for p in model.parameters() if p.requires_grad]
    engine = initialize_deepspeed(
        model=model, optimizer=torch.optim.SGD(params, lr=1.0),
        config=deepspeed_config(stage, len(examples), 1, False, micro_batch=micro))
    names = [n for n, p in engine.module.named_parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters(params):
        before = [p.detach().clone() for p in params]
    sums = accumulate(engine, Supervised(16, 0, packing), examples)
    with deepspeed.zero.GatheredParameters(params):
        delta = {n: p.detach() - b for n, p, b in zip(names, params, before)}
    results[f"{micro}-{packing}"] = {"sums": sums, "delta": delta,
                                     "optimizer_steps": engine.global_steps}
torch.save(results, out)
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_a_step_split_into_micro_batches_trains_like_one_forward(
    tiny_model_dir, vocab_size, tmp_path, stage
):
    """SGD with lr 1 under DeepSpeed: the update is minus the step's (clipped) gradient, the
    same for every micro-batch size and with packing on or off, and the mean over examples
    of each example's loss, as one example at a time computes it."""
    examples = sample_examples(vocab_size)
    runs = [[6, True], [3, False], [2, True], [1, True]]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0",
               WORLD_SIZE="1", LOCAL_RANK="0")
    run = subprocess.run(
        [sys.executable, "-c", ONE_STEP, str(tiny_model_dir), str(stage), json.dumps(runs),
         str(tmp_path / "out.pt")],
        input=json.dumps([[e.input_ids, e.labels] for e in examples]), cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = torch.load(tmp_path / "out.pt")

    model = with_lora_qv(load(tiny_model_dir))
    losses = []
    for e in examples:  # one example per forward, no DeepSpeed
        logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1]
        losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(e.labels[1:]),
                                                        ignore_index=X))
    torch.stack(losses).mean().backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    expected = {n: -p.grad for n, p in model.named_parameters() if p.requires_grad}

    first = results["6-True"]
    for name, result in results.items():
        assert result["optimizer_steps"] == 1, name
        assert result["sums"]["count"] == first["sums"]["count"]
        assert result["sums"]["loss_sum"] == pytest.approx(first["sums"]["loss_sum"], rel=1e-5)
        assert set(result["delta"]) == set(expected)
        for param, delta in expected.items():
            assert delta.abs().sum() > 0
            torch.testing.assert_close(result["delta"][param], delta, rtol=1e-3, atol=1e-6,
                                       msg=lambda m, n=name, p=param: f"{n} {p}: {m}")


def with_lora_qv(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                            task_type="CAUSAL_LM",
                                            target_modules=["q_proj", "v_proj"]))
