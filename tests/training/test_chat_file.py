"""A bad training file fails on its first bad line, with OpenAI's ``Line N: ...`` message."""

from __future__ import annotations

import json

import pytest

from training.chat_file import InvalidTrainingFile, parse_chat_jsonl

GOOD = json.dumps(
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
)


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"prompt": "x"}', "missing or empty 'messages'"),
        ('{"messages": []}', "missing or empty 'messages'"),
        ('{"messages": ["hi"]}', "messages[0] is not an object"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "unsupported role 'bot'"),
        ('{"messages": [{"role": "user"}]}', "messages[0] has no text 'content'"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message"),
        ('{"messages": [{"role": "assistant", "content": "x", "weight": 2}]}', "'weight'"),
    ],
)
def test_first_bad_line_is_named(bad_line, reason):
    text = "\n".join([GOOD, GOOD, bad_line, GOOD]) + "\n"

    with pytest.raises(InvalidTrainingFile) as caught:
        parse_chat_jsonl(text)

    assert caught.value.line == 3
    assert str(caught.value).startswith("Line 3: ")
    assert reason in str(caught.value)
    assert caught.value.error_data == {
        "code": "invalid_training_file", "param": "training_file", "message": str(caught.value)
    }


def test_blank_lines_are_skipped_but_counted():
    text = f"{GOOD}\n\n{GOOD}\n   \n{{bad\n"

    with pytest.raises(InvalidTrainingFile, match="^Line 5: "):
        parse_chat_jsonl(text)
    assert len(parse_chat_jsonl(f"{GOOD}\n\n{GOOD}\n")) == 2


def test_empty_file_is_invalid():
    with pytest.raises(InvalidTrainingFile, match="no examples"):
        parse_chat_jsonl("\n\n")
