"""Packing: exact batch tensors, no cross-talk in a real Llama, one loss however batched
(packed or not, in one forward or in micro-batches)."""

from __future__ import annotations

import doctest
import random

import pytest
import torch

import training.packing
from training.chat_template import IGNORE_INDEX, TokenizedExample
from training.packing import build_batch, model_inputs, pack
from training.token_loss import final_hidden_states, weighted_token_loss

X = IGNORE_INDEX


def test_docstring_examples_hold():
    assert doctest.testmod(training.packing).failed == 0


def example(n: int) -> TokenizedExample:
    return TokenizedExample(list(range(n)), list(range(n)))


@pytest.mark.parametrize(
    ("lengths", "max_seq_length", "rows"),
    [
        ([3, 5, 2, 4, 1], 6, [[1, 4], [3, 2], [0]]),
        ([2, 2, 2], 6, [[0, 1, 2]]),  # ties keep input order
        ([4, 4], 4, [[0], [1]]),  # a full row takes nothing more
        ([1], 1, [[0]]),
    ],
)
def test_pack_is_first_fit_decreasing(lengths, max_seq_length, rows):
    assert pack([example(n) for n in lengths], max_seq_length) == rows


def test_pack_refuses_an_example_longer_than_a_row():
    with pytest.raises(ValueError, match="example 1 has 5 tokens"):
        pack([example(2), example(5)], max_seq_length=4)


A = TokenizedExample([5, 6, 7], [X, 6, 7])
B = TokenizedExample([8, 9], [8, 9])  # a trained first label: nothing predicts it
C = TokenizedExample([3, 4], [X, X])  # truncation left no trained token


@pytest.mark.parametrize(
    ("examples", "packing", "kwargs", "expected"),
    [
        (
            [A, B, C],
            True,
            {},
            {
                "input_ids": [[5, 6, 7, 8, 9], [3, 4, 0, 0, 0]],
                "position_ids": [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]],
                "labels": [[X, 6, 7, X, 9], [X, X, X, X, X]],
                "loss_weights": [[0, 1 / 6, 1 / 6, 0, 1 / 3], [0, 0, 0, 0, 0]],
                "cu_seq_lens": [0, 3, 5, 7, 10],
            },
        ),
        (
            [A, B, C],
            False,
            {},
            {
                "input_ids": [[5, 6, 7], [8, 9, 0], [3, 4, 0]],
                "position_ids": [[0, 1, 2], [0, 1, 0], [0, 1, 0]],
                "labels": [[X, 6, 7], [X, 9, X], [X, X, X]],
                "loss_weights": [[0, 1 / 6, 1 / 6], [0, 1 / 3, 0], [0, 0, 0]],
                "cu_seq_lens": [0, 3, 5, 6, 8, 9],
            },
        ),
        (
            [B, A],  # the longer example goes first in its row
            True,
            {},
            {
                "input_ids": [[5, 6, 7, 8, 9]],
                "position_ids": [[0, 1, 2, 0, 1]],
                "labels": [[X, 6, 7, X, 9]],
                "loss_weights": [[0, 1 / 4, 1 / 4, 0, 1 / 2]],
                "cu_seq_lens": [0, 3, 5],
            },
        ),
    ],
)
def test_build_batch_tensors(examples, packing, kwargs, expected):
    batch = build_batch(examples, max_seq_length=5, pad_id=0, packing=packing, **kwargs)
    assert set(batch) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(batch[key], torch.tensor(value, dtype=batch[key].dtype))
    assert batch["cu_seq_lens"].dtype == torch.int32


def test_model_inputs_carry_no_attention_mask_and_the_varlen_kwargs():
    batch = build_batch([A, B, C], max_seq_length=5, pad_id=0, packing=True)
    inputs = model_inputs(batch, "cpu")
    assert "attention_mask" not in inputs
    assert inputs["cu_seq_lens_q"].tolist() == [0, 3, 5, 7, 10]
    assert inputs["max_length_q"] == inputs["max_length_k"] == 3


# --- a real model --------------------------------------------------------------------------

MAX_SEQ_LENGTH = 16
LENGTHS = [12, 9, 7, 5, 3, 2]  # with one more of 4: rows of 16, 16 and 10 (padded) tokens


def sample_examples(vocab_size: int) -> list[TokenizedExample]:
    rng = random.Random(0)
    examples = []
    for n in LENGTHS:
        ids = [rng.randrange(3, vocab_size) for _ in range(n)]
        prompt = rng.randrange(1, n)
        examples.append(TokenizedExample(ids, [X] * prompt + ids[prompt:]))
    examples.append(TokenizedExample(examples[0].input_ids[:4], [X] * 4))  # nothing trained
    return examples


def load(model_dir, attn: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=attn
    )
    return model.eval()


def with_lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,  # random B too, so every LoRA weight has a gradient
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def alone(model, example: TokenizedExample) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and loss of ``example`` as the old loop ran it: a batch of one, no padding."""
    logits, (loss, *_) = alone_with_sums(model, example)
    return logits, loss


def alone_with_sums(model, example: TokenizedExample):
    """Logits and ``(mean loss, loss sum, correct, count)``: the one-example loop's loss."""
    logits = model(input_ids=torch.tensor([example.input_ids])).logits[0]
    targets = torch.tensor(example.labels[1:])
    trained = targets != X
    losses = torch.nn.functional.cross_entropy(
        logits[:-1], targets, ignore_index=X, reduction="none"
    )
    count = trained.sum()
    correct = ((logits[:-1].argmax(-1) == targets) & trained).sum()
    return logits, (losses.sum() / count.clamp(min=1), losses.sum(), correct, count)


def spans(examples, packing: bool) -> dict[int, tuple[int, int]]:
    """Row and start of each example in a batch built by ``build_batch``."""
    rows = pack(examples, MAX_SEQ_LENGTH) if packing else [[i] for i in range(len(examples))]
    where = {}
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            where[i] = (r, start)
            start += examples[i].num_tokens
    return where


def mean_loss_alone(model, examples) -> torch.Tensor:
    return torch.stack([alone(model, e)[1] for e in examples]).mean()


@pytest.fixture(scope="module")
def examples(tiny_model_dir):
    return sample_examples(load(tiny_model_dir, "sdpa").config.vocab_size)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("packing", [True, False])
def test_each_example_sees_only_itself_and_the_loss_is_the_mean_of_losses_alone(
    tiny_model_dir, examples, attn, packing
):
    model = load(tiny_model_dir, attn)
    batch = build_batch(examples, MAX_SEQ_LENGTH, pad_id=0, packing=packing)
    if packing:
        assert batch["input_ids"].shape[0] < len(examples)
    with torch.no_grad():
        logits = model(**model_inputs(batch, "cpu")).logits
        for i, (row, start) in spans(examples, packing).items():
            expected, _ = alone(model, examples[i])
            got = logits[row, start : start + examples[i].num_tokens]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

        hidden = final_hidden_states(model, model_inputs(batch, "cpu"))
        loss, loss_sum, correct, count = weighted_token_loss(model, hidden, batch)
        torch.testing.assert_close(loss, mean_loss_alone(model, examples), rtol=1e-5, atol=1e-6)
        # The metric sums are the old loop's, added over its micro steps.
        sums = torch.stack(
            [torch.stack(alone_with_sums(model, e)[1][1:]).double() for e in examples]
        ).sum(0)
    torch.testing.assert_close(float(loss_sum), float(sums[0]), rtol=1e-5, atol=1e-5)
    assert (int(correct), int(count)) == (int(sums[1]), int(sums[2]))
    assert int(count) == sum(1 for e in examples for label in e.labels[1:] if label != X)


@pytest.mark.parametrize("packing", [True, False])
def test_lora_gradients_match_examples_trained_one_by_one(tiny_model_dir, examples, packing):
    model = with_lora(load(tiny_model_dir, "sdpa"))
    batch = build_batch(examples, MAX_SEQ_LENGTH, pad_id=0, packing=packing)
    hidden = final_hidden_states(model, model_inputs(batch, "cpu"))
    loss, *_ = weighted_token_loss(model, hidden, batch)
    loss.backward()
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    batched = {n: p.grad.clone() for n, p in lora.items()}

    model.zero_grad()
    mean_loss_alone(model, examples).backward()  # one example per forward
    assert len(lora) == 2 * 4 * 2  # A and B of 4 projections in 2 layers
    for name, param in lora.items():
        assert param.grad.abs().sum() > 0, name
        torch.testing.assert_close(batched[name], param.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("micro", [1, 7])
@pytest.mark.parametrize("packing", [True, False])
def test_micro_batch_losses_averaged_as_deepspeed_does_are_the_step_loss(
    tiny_model_dir, examples, micro, packing
):
    """DeepSpeed divides each micro-batch's loss by the number of micro-batches."""
    model = load(tiny_model_dir, "sdpa")
    n = len(examples)
    with torch.no_grad():
        parts = []
        for at in range(0, n, micro):
            batch = build_batch(examples[at : at + micro], MAX_SEQ_LENGTH, 0, packing)
            hidden = final_hidden_states(model, model_inputs(batch, "cpu"))
            parts.append(weighted_token_loss(model, hidden, batch)[0] / (n // micro))
        torch.testing.assert_close(sum(parts), mean_loss_alone(model, examples))


@pytest.mark.parametrize(
    "naive",
    [
        {"position_ids": None},  # plain concatenation: positions 0..L-1, causal mask
        {"attention_mask": "ones"},  # what the one-example loop passes
        {"use_cache": True},  # Llama's default
    ],
    ids=["no position_ids", "attention_mask of ones", "use_cache"],
)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_naive_concatenation_leaks_between_examples(tiny_model_dir, examples, naive, attn):
    """Without the restarted positions reaching the mask, later examples see earlier ones."""
    model = load(tiny_model_dir, attn)
    batch = build_batch(examples, MAX_SEQ_LENGTH, pad_id=0, packing=True)
    inputs = model_inputs(batch, "cpu")
    for key, value in naive.items():
        inputs[key] = torch.ones_like(batch["input_ids"]) if value == "ones" else value
    with torch.no_grad():
        logits = model(**inputs).logits
        later = [(i, rs) for i, rs in spans(examples, True).items() if rs[1] > 0]
        assert later
        for i, (row, start) in later:
            expected, _ = alone(model, examples[i])
            got = logits[row, start : start + examples[i].num_tokens]
            assert (got - expected).abs().max() > 1e-2


def varlen_reference_attention(module, query, key, value, attention_mask, **kwargs):
    """What flash_attn_varlen_func computes, on CPU: causal attention inside each
    ``cu_seq_lens_q`` segment of the rows flattened end to end, as transformers' flash path
    flattens them."""
    assert attention_mask is None
    batch, heads, length, dim = query.shape
    cu = kwargs["cu_seq_lens_q"].tolist()
    assert kwargs["max_length_q"] == max(b - a for a, b in zip(cu, cu[1:], strict=False))
    q, k, v = (x.transpose(0, 1).reshape(x.shape[1], -1, dim) for x in (query, key, value))
    out = torch.cat(
        [
            torch.nn.functional.scaled_dot_product_attention(
                q[:, a:b], k[:, a:b], v[:, a:b], is_causal=True, scale=kwargs.get("scaling")
            )
            for a, b in zip(cu, cu[1:], strict=False)
        ],
        dim=1,
    )
    return out.view(heads, batch, length, dim).permute(1, 2, 0, 3), None


def test_varlen_kwargs_describe_each_example_as_flash_attention_reads_them(
    tiny_model_dir, examples
):
    from transformers import AttentionInterface

    AttentionInterface.register("varlen_reference", varlen_reference_attention)
    model = load(tiny_model_dir, "varlen_reference")
    reference = load(tiny_model_dir, "sdpa")
    batch = build_batch(examples, MAX_SEQ_LENGTH, pad_id=0, packing=True)
    with torch.no_grad():
        logits = model(**model_inputs(batch, "cpu")).logits
        for i, (row, start) in spans(examples, True).items():
            expected, _ = alone(reference, examples[i])
            got = logits[row, start : start + examples[i].num_tokens]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_flash_attention_2_packed_matches_alone(tiny_model_dir, examples):
    pytest.importorskip("flash_attn")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.bfloat16, attn_implementation="flash_attention_2"
    ).cuda()
    batch = build_batch(examples, MAX_SEQ_LENGTH, pad_id=0, packing=True)
    with torch.no_grad():
        logits = model(**model_inputs(batch, "cuda")).logits.float()
        for i, (row, start) in spans(examples, True).items():
            ids = torch.tensor([examples[i].input_ids], device="cuda")
            expected = model(input_ids=ids).logits[0].float()
            got = logits[row, start : start + examples[i].num_tokens]
            torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
