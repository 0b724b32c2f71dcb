"""Pure pieces: hyperparameter rule, key parsing, chat-file validation, naming."""

from __future__ import annotations

import json

import pytest

from contract.chat_format import InvalidChatFile, parse_example, read_examples
from service.auth import KeyRing, parse_api_keys
from service.errors import AuthenticationFailed
from service.models.naming import fine_tuned_model_name


def test_keys_are_matched_and_bad_specs_refused():
    ring = KeyRing(parse_api_keys("k1=org-a, k2=org-b"))
    assert ring.authenticate("Bearer k2").organization == "org-b"
    with pytest.raises(AuthenticationFailed):
        ring.authenticate("Bearer k3")
    with pytest.raises(AuthenticationFailed):
        ring.authenticate(None)
    with pytest.raises(ValueError):
        parse_api_keys("k1=org:a")


def test_model_name_shape():
    assert fine_tuned_model_name("base", "org", None, "abc") == "ft:base:org::abc"
    assert fine_tuned_model_name("base", "org", "x", "abc") == "ft:base:org:x:abc"


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


@pytest.mark.parametrize("line, fragment", [
    ("{nope", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"prompt": "x"}', "unrecognized key"),
    ('{"messages": []}', "non-empty 'messages'"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "unknown role"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message"),
    ('{"messages": [{"role": "assistant", "content": "x", "weight": 2}]}', "'weight'"),
    ('{"messages": [{"role": "assistant", "content": 5}]}', "'content' must be a string"),
    ('{"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c",'
     ' "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]}',
     "tool_calls[0]"),
    ('{"messages": [{"role": "assistant", "content": null, "tool_calls": "f()"}]}',
     "'tool_calls' must be a non-empty list"),
    ('{"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []}',
     "preference (DPO) example"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
])
def test_each_bad_line_names_line_and_problem(line, fragment):
    with pytest.raises(InvalidChatFile) as e:
        parse_example(line, 7)
    assert e.value.line == 7 and str(e.value).startswith("Line 7") and fragment in str(e.value)


def test_tool_calls_in_openai_shape_are_accepted():
    line = json.dumps({"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
        {"role": "assistant", "content": "It rains."}]})
    assert parse_example(line, 1)["messages"][1]["tool_calls"][0]["id"] == "call_1"


def test_read_examples_counts_and_skips_blank_lines():
    lines = [json.dumps(GOOD)] * 10 + [""]
    assert len(read_examples(lines)) == 10
    with pytest.raises(InvalidChatFile) as e:
        read_examples(lines[:9])
    assert e.value.code == "invalid_n_examples"


def test_token_counter_matches_the_chat_template(tiny_model_dir):
    """The service's torch-free count equals transformers' own apply_chat_template."""
    from transformers import AutoTokenizer

    from service.jobs.token_count import ChatTokenCounter

    example = {"messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "What is the capital of France?"},
                            {"role": "assistant", "content": "Paris.", "weight": 1}]}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rendered = tokenizer.apply_chat_template(
        [{k: v for k, v in m.items() if k != "weight"} for m in example["messages"]],
        tokenize=False)
    expected = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert ChatTokenCounter(tiny_model_dir).count(example) == expected


def test_diverged_metrics_are_stored_as_null():
    from service.jobs.scheduler.ingest import json_safe

    assert json_safe({"train_loss": float("nan"), "x": [float("inf"), 1.5], "step": 3}) == \
        {"train_loss": None, "x": [None, 1.5], "step": 3}


def test_an_unreachable_service_is_one_log_line_per_job_and_tick(caplog) -> None:
    """Ray or the bucket away: the scheduler says so in a line and goes on; anything else
    keeps its traceback, which is what someone debugging needs."""
    import httpx

    from service.jobs.scheduler import Scheduler

    def ray_away(job_id: str) -> None:
        raise httpx.ConnectError("[Errno 111] Connection refused\nmore")

    def bug(job_id: str) -> None:
        raise KeyError("status")

    with caplog.at_level("WARNING", logger="openft.scheduler"):
        Scheduler._guarded(ray_away, "ftjob-1")
        Scheduler._guarded(bug, "ftjob-2")
    away, broken = caplog.records
    assert away.levelname == "WARNING" and away.exc_info is None
    assert "ftjob-1" in away.getMessage() and "Connection refused" in away.getMessage()
    assert "more" not in away.getMessage()
    assert broken.levelname == "ERROR" and broken.exc_info is not None
