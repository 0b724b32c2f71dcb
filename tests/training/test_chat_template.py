"""Labels come from the tokenizer's own chat template: only assistant turns carry loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.tiny_model import build_tokenizer
from training.chat_template import IGNORE_INDEX, TokenizedExample, tokenize_chat


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return build_tokenizer(Path(tmp_path_factory.mktemp("tok")))


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str, **extra) -> dict:
    return {"role": "assistant", "content": text, **extra}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


END = "<|im_end|>"

CASES = [
    # (name, messages, tokens cut from the end, decoded runs of trained tokens)
    (
        "single turn",
        [user("What is the capital of France?"), assistant("The capital of France is Paris.")],
        0,
        ["The capital of France is Paris." + END],
    ),
    (
        "multi turn",
        [
            user("Hello!"),
            assistant("How can I help you today?"),
            user("Extract the name as JSON."),
            assistant('{"name": "Alice"}'),
        ],
        0,
        ["How can I help you today?" + END, '{"name": "Alice"}' + END],
    ),
    (
        "system message",
        [
            system("Extract the name, age and city as JSON."),
            user("Alice, 30, Berlin"),
            assistant('{"name": "Alice", "age": 30, "city": "Berlin"}'),
        ],
        0,
        ['{"name": "Alice", "age": 30, "city": "Berlin"}' + END],
    ),
    (
        "weight 0 stays untrained",
        [
            user("Hello!"),
            assistant("The quick brown fox.", weight=0),
            user("What is the capital?"),
            assistant("Paris.", weight=1),
        ],
        0,
        ["Paris." + END],
    ),
    (
        "truncation cuts the end",
        # Dropped: the final "\n", "<|im_end|>" and ".".
        [user("What is the capital of France?"), assistant("The capital of France is Paris.")],
        3,
        ["The capital of France is Paris"],
    ),
]


def trained_runs(tokenizer, example: TokenizedExample) -> list[str]:
    """Decode each maximal run of loss-carrying tokens."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in example.labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return [tokenizer.decode(run) for run in runs]


@pytest.mark.parametrize(
    ("messages", "cut", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_only_assistant_turns_carry_loss(tokenizer, messages, cut, expected):
    full_length = tokenize_chat(tokenizer, messages, max_seq_length=4096).num_tokens
    example = tokenize_chat(tokenizer, messages, max_seq_length=full_length - cut)

    assert trained_runs(tokenizer, example) == expected
    assert example.num_tokens == full_length - cut
    assert len(example.labels) == len(example.input_ids)
    assert all(
        label in (IGNORE_INDEX, token)
        for token, label in zip(example.input_ids, example.labels, strict=True)
    )


@pytest.mark.parametrize(
    ("messages", "cut", "expected"), [c[1:] for c in CASES[:4]], ids=[c[0] for c in CASES[:4]]
)
def test_prompt_text_is_all_untrained(tokenizer, messages, cut, expected):
    """Decoding the untrained tokens gives back every system and user message."""
    example = tokenize_chat(tokenizer, messages, max_seq_length=4096)
    untrained = tokenizer.decode(
        [
            t
            for t, label in zip(example.input_ids, example.labels, strict=True)
            if label == IGNORE_INDEX
        ]
    )
    for message in messages:
        if message["role"] != "assistant" or message.get("weight") == 0:
            assert message["content"] in untrained


def test_docstring_example(tokenizer):
    example = tokenize_chat(tokenizer, [user("Hi"), assistant("Hello!")], 64)

    assert (example.input_ids[-5:], example.labels[-5:]) == (
        [201, 441, 3, 2, 201],
        [-100, 441, 3, 2, -100],
    )
    assert tokenizer.decode([t for t in example.labels if t != -100]) == "Hello!<|im_end|>"
    assert example.num_trained_tokens == 3
