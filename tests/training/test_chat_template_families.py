"""Loss masks under the real chat templates of each base model family we fine-tune.

Each family's tokenizer (``tests/support/chat_templates.py``) carries its model's official
template, so these tables show what a user training Qwen2.5, Llama 3.1 or Mistral v0.3 gets:
which text carries loss, with tools, tool calls, system prompts and ``weight: 0`` turns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.chat_templates import FAMILIES, build_chat_tokenizer
from training.chat_template import IGNORE_INDEX, TokenizedExample, tokenize_chat

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str, **extra: Any) -> dict:
    return {"role": "assistant", "content": text, **extra}


# OpenAI's training format: arguments as a JSON string, content null. Mistral v0.3's template
# wants 9-character call ids.
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "abc123XYZ",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}
RESULT = {
    "role": "tool",
    "tool_call_id": "abc123XYZ",
    "content": '{"temperature": 22, "sky": "sunny"}',
}
ANSWER = "It is sunny and 22 degrees in Paris."

CONVERSATIONS: dict[str, tuple[list[dict], list[dict] | None]] = {
    "system prompt": (
        [
            system("Be brief."),
            user("What is the capital of France?"),
            assistant("The capital of France is Paris."),
        ],
        None,
    ),
    "multi turn": (
        [
            user("Hello!"),
            assistant("How can I help you today?"),
            user("What is the capital of France?"),
            assistant("Paris."),
        ],
        None,
    ),
    # The same answer twice: only the second, after "What is the capital?", is trained.
    "weight 0 stays untrained": (
        [
            system("Be brief."),
            user("Hello!"),
            assistant("Paris.", weight=0),
            user("What is the capital?"),
            assistant("Paris.", weight=1),
        ],
        None,
    ),
    "tool call": (
        [system("Be brief."), user("What is the weather in Paris?"), CALL, RESULT,
         assistant(ANSWER)],
        TOOLS,
    ),
    "tool call after a turn": (
        [
            user("Hello!"),
            assistant("How can I help you today?"),
            user("What is the weather in Paris?"),
            CALL,
            RESULT,
            assistant(ANSWER),
        ],
        TOOLS,
    ),
    "tool call untrained": (
        [user("What is the weather in Paris?"), {**CALL, "weight": 0}, RESULT, assistant(ANSWER)],
        TOOLS,
    ),
}

END = {"qwen2.5": "<|im_end|>", "llama3.1": "<|eot_id|>", "mistral-v0.3": "</s>"}
CALL_TEXT = {
    "qwen2.5": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    "llama3.1": '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    "mistral-v0.3": '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, '
    '"id": "abc123XYZ"}]',
}


def expected_runs(family: str, case: str) -> list[str]:
    """Decoded runs of trained tokens: the same answers in every family, each with its
    end-of-turn token; tool calls as each template writes them."""
    end, call = END[family], CALL_TEXT[family] + END[family]
    return {
        "system prompt": ["The capital of France is Paris." + end],
        "multi turn": ["How can I help you today?" + end, "Paris." + end],
        "weight 0 stays untrained": ["Paris." + end],
        "tool call": [call, ANSWER + end],
        "tool call after a turn": ["How can I help you today?" + end, call, ANSWER + end],
        "tool call untrained": [ANSWER + end],
    }[case]


# The exact trained ids of "system prompt" per family (the tokenizers are deterministic).
SYSTEM_PROMPT_IDS = {
    "qwen2.5": [340, 388, 379, 387, 293, 325, 16, 2],
    "llama3.1": [345, 393, 384, 392, 298, 330, 21, 6],
    "mistral-v0.3": [244, 261, 247, 256, 145, 248, 2],
}

CASES = [(family, case) for family in FAMILIES for case in CONVERSATIONS]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return {
        name: build_chat_tokenizer(family, Path(tmp_path_factory.mktemp(name)))
        for name, family in FAMILIES.items()
    }


def trained_runs(tokenizer: Any, example: TokenizedExample) -> list[list[int]]:
    """Each maximal run of loss-carrying token ids."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in example.labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def untrained_text(tokenizer: Any, example: TokenizedExample) -> str:
    return tokenizer.decode(
        [t for t, label in zip(example.input_ids, example.labels, strict=True)
         if label == IGNORE_INDEX]
    )


def hugging_face_form(messages: list[dict]) -> list[dict]:
    """The conversation as a transformers user writes it: arguments as objects, no weight."""
    out = []
    for message in messages:
        message = {k: v for k, v in message.items() if k != "weight"}
        if "tool_calls" in message:
            message["tool_calls"] = [
                {**c, "function": {**c["function"],
                                   "arguments": json.loads(c["function"]["arguments"])}}
                for c in message["tool_calls"]
            ]
        out.append(message)
    return out


@pytest.mark.parametrize(("family", "case"), CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_only_assistant_turns_carry_loss(tokenizers, family, case):
    tokenizer = tokenizers[family]
    messages, tools = CONVERSATIONS[case]

    example = tokenize_chat(tokenizer, messages, 4096, tools=tools)

    runs = [tokenizer.decode(run) for run in trained_runs(tokenizer, example)]
    assert runs == expected_runs(family, case)
    assert all(
        label in (IGNORE_INDEX, token)
        for token, label in zip(example.input_ids, example.labels, strict=True)
    )


@pytest.mark.parametrize(("family", "case"), CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_ids_are_the_templates_own(tokenizers, family, case):
    """We train on exactly the ids ``apply_chat_template`` gives for the whole conversation."""
    tokenizer = tokenizers[family]
    messages, tools = CONVERSATIONS[case]

    expected = tokenizer.apply_chat_template(
        hugging_face_form(messages), tools=tools, tokenize=True, return_dict=False
    )

    assert tokenize_chat(tokenizer, messages, 4096, tools=tools).input_ids == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_trained_ids(tokenizers, family):
    tokenizer = tokenizers[family]
    messages, _ = CONVERSATIONS["system prompt"]

    example = tokenize_chat(tokenizer, messages, 4096)

    trained = [label for label in example.labels if label != IGNORE_INDEX]
    assert trained == SYSTEM_PROMPT_IDS[family]
    assert tokenizer.decode(trained) == "The capital of France is Paris." + END[family]
    assert len(trained_runs(tokenizer, example)) == 1


def test_sentencepiece_answers_keep_their_leading_space(tokenizers):
    """Mistral writes ``[/INST] answer``: ``▁The`` holds the space and is trained."""
    tokenizer = tokenizers["mistral-v0.3"]
    for case in ("system prompt", "multi turn"):
        example = tokenize_chat(tokenizer, CONVERSATIONS[case][0], 4096)
        first = trained_runs(tokenizer, example)[-1][0]
        assert tokenizer.convert_ids_to_tokens(first).startswith("▁")


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_0_answer_is_the_untrained_one(tokenizers, family):
    tokenizer = tokenizers[family]
    messages, _ = CONVERSATIONS["weight 0 stays untrained"]

    example = tokenize_chat(tokenizer, messages, 4096)

    first_trained = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    prompt = tokenizer.decode(example.input_ids[:first_trained])
    assert "Paris." in prompt
    assert prompt.index("Paris.") < prompt.index("What is the capital?")


@pytest.mark.parametrize("family", FAMILIES)
def test_tool_definitions_are_rendered_and_untrained(tokenizers, family):
    tokenizer = tokenizers[family]
    messages, tools = CONVERSATIONS["tool call"]

    with_tools = tokenize_chat(tokenizer, messages, 4096, tools=tools)

    assert "Current weather in a city" in untrained_text(tokenizer, with_tools)
    assert with_tools.num_tokens > tokenize_chat(tokenizer, messages, 4096).num_tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_system_and_user_text_are_untrained(tokenizers, family):
    tokenizer = tokenizers[family]
    messages, tools = CONVERSATIONS["tool call"]

    prompt = untrained_text(tokenizer, tokenize_chat(tokenizer, messages, 4096, tools=tools))

    assert "What is the weather in Paris?" in prompt
    assert "sunny" in prompt  # the tool result
    # Mistral v0.3 writes the system prompt only into a final user turn: not in training.
    assert ("Be brief." in prompt) == (family != "mistral-v0.3")


@pytest.mark.parametrize("family", FAMILIES)
def test_truncation_cuts_the_end(tokenizers, family):
    tokenizer = tokenizers[family]
    messages, tools = CONVERSATIONS["tool call"]
    full = tokenize_chat(tokenizer, messages, 4096, tools=tools)

    # Cut into the final answer: its last 4 tokens (end of turn included) are gone.
    cut = tokenize_chat(tokenizer, messages, full.num_tokens - 4, tools=tools)

    assert cut.num_tokens == full.num_tokens - 4
    assert cut.input_ids == full.input_ids[:-4]
    assert cut.labels == full.labels[: cut.num_tokens]
    last_run = tokenizer.decode(trained_runs(tokenizer, cut)[-1])
    assert ANSWER.startswith(last_run.strip()) and last_run.strip() != ANSWER
