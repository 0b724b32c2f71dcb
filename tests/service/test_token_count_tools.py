"""The service's torch-free token count equals the training side's rendering, tools included."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.jobs.token_count import ChatTokenCounter
from tests.support.chat_templates import FAMILIES, build_chat_tokenizer

# Non-ASCII in a tool definition: transformers' ``tojson`` keeps it, jinja2's would escape it.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city, in °C (Zürich, São Paulo...)",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_EXAMPLE = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "abc123XYZ",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "abc123XYZ", "content": '{"temperature": 22}'},
        {"role": "assistant", "content": "It is sunny and 22 degrees in Paris.", "weight": 1},
    ],
    "tools": TOOLS,
    "parallel_tool_calls": False,
}
PLAIN_EXAMPLE = {
    "messages": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris.", "weight": 0},
        {"role": "user", "content": "Say it again."},
        {"role": "assistant", "content": "Paris."},
    ]
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = Path(tmp_path_factory.mktemp(request.param))
    build_chat_tokenizer(FAMILIES[request.param], out)
    return out


@pytest.mark.parametrize("example", [TOOL_EXAMPLE, PLAIN_EXAMPLE], ids=["tools", "plain"])
def test_count_equals_the_training_rendering(model_dir, example):
    from transformers import AutoTokenizer

    from training.chat_template import tokenize_chat

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trained = tokenize_chat(
        tokenizer, example["messages"], max_seq_length=1_000_000, tools=example.get("tools")
    )

    assert ChatTokenCounter(model_dir).count(example) == trained.num_tokens


def test_tools_are_counted(model_dir):
    counter = ChatTokenCounter(model_dir)
    without_tools = {k: v for k, v in TOOL_EXAMPLE.items() if k != "tools"}

    assert counter.count(TOOL_EXAMPLE) > counter.count(without_tools)
