"""``bench/quality``: the promises a quality number rests on.

A held-out score means something only if the held-out rows are new to the model (no name,
value or sentence shape from training), if openft accepts the training rows as they are
uploaded, and if the metric tells a right answer from a wrong one. Each is checked here for
every task, on the rows the generators really write.
"""

from __future__ import annotations

import doctest
import json
import random
import re
from typing import Any

import pytest
from openai.types.chat import ChatCompletionMessageToolCall

from bench.quality.tasks import (
    TASKS,
    Task,
    base,
    dpo_format,
    parse_tool_call,
    rewrite,
    to_jsonl,
    tool_call,
)
from bench.quality.tasks.base import Drawn
from contract.chat_format import read_examples
from contract.loss_spans import trained_spans

SEED = 7
NAMES = sorted(TASKS)


@pytest.fixture(scope="module")
def made() -> dict[str, base.TaskData]:
    return {name: task.make(SEED) for name, task in TASKS.items()}


def user_lines(messages: list[dict[str, Any]]) -> list[str]:
    """Each line a user wrote: the text a sentence template produced."""
    return [line for m in messages if m["role"] == "user" for line in m["content"].splitlines()]


def prompt_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    return row["input"]["messages"] if "input" in row else row["messages"]


def template_pattern(template: str) -> re.Pattern[str]:
    """A sentence template as a regex: its fixed words literal, each ``{slot}`` any text."""
    parts = re.split(r"\{\w+\}", template)
    return re.compile("(.+?)".join(re.escape(p) for p in parts))


def as_model_answer(drawn: Drawn) -> Any:
    """What a model writing the trained answer returns: its text, or its tool calls."""
    return drawn.answer.get("content") or drawn.answer["tool_calls"]


def draws(task: Task, split: base.Split, n: int = 30) -> list[Drawn]:
    rng = random.Random(f"test-{task.name}-{split}")
    return [task.draw(rng, task.pools(split)) for _ in range(n)]


def test_the_suite_has_the_issues_tasks():
    assert {"flat_json", "nested_json", "classify", "multi_turn", "tool_call", "rewrite",
            "dpo_format"} <= set(TASKS)
    assert all(name == task.name for name, task in TASKS.items())
    assert {task.method for task in TASKS.values()} == {"supervised", "dpo"}


def test_default_sizes_fit_a_small_cpu_fine_tune(made):
    for data in made.values():
        assert 120 <= len(data.train) <= 200
        assert 50 <= len(data.heldout) <= 80


@pytest.mark.parametrize("name", NAMES)
def test_a_score_rests_on_many_shapes_and_no_repeated_item(name, made):
    """A greedy model answers a repeated prompt the same way, and a shape it gets wrong is
    wrong for all its items: a score over few shapes or repeats moves in big jumps."""
    items = made[name].heldout
    prompts = [json.dumps([i.messages, i.tools], sort_keys=True) for i in items]
    assert len(set(prompts)) == len(items)
    assert sum(len(t) for t in TASKS[name].heldout_pools.templates.values()) >= 8


@pytest.mark.parametrize("name", NAMES)
def test_rows_are_short(name, made):
    """About 4 characters a token: 480 characters of text keep a row near 120 tokens."""
    for row in made[name].train:
        text = json.dumps(row.get("input", row)["messages"]) + json.dumps(
            row.get("preferred_output", []) + row.get("non_preferred_output", []))
        assert len(text) < 480 * 1.6, text  # JSON quoting and keys add about 60%


@pytest.mark.parametrize("name", NAMES)
def test_pools_of_the_two_splits_are_disjoint(name):
    task = TASKS[name]
    train, heldout = task.pools("train"), task.pools("heldout")
    assert not train.all_values() & heldout.all_values()
    assert not train.all_templates() & heldout.all_templates()


def test_no_heldout_value_appears_in_any_training_row_of_the_suite(made):
    """Across tasks too: one model tuned on every task's rows still meets only new values."""
    training_text = "\n".join(json.dumps(row, ensure_ascii=False)
                              for d in made.values() for row in d.train)
    heldout_values = {v for t in TASKS.values() for v in t.pools("heldout").all_values()}
    leaked = [v for v in heldout_values
              if re.search(rf"(?<!\w){re.escape(v)}(?!\w)", training_text)]
    assert not leaked


@pytest.mark.parametrize("name", NAMES)
def test_heldout_rows_really_use_the_heldout_values(name, made):
    """The check above means something only if held-out prompts carry held-out values (a
    few ticket wordings have no slot, so not every one)."""
    values = TASKS[name].pools("heldout").all_values()
    heldout = made[name].heldout
    carrying = [e for e in heldout
                if any(v in line for line in user_lines(e.messages) for v in values)]
    assert len(carrying) >= len(heldout) / 2


@pytest.mark.parametrize("name", NAMES)
def test_no_heldout_sentence_has_a_training_shape(name, made):
    task = TASKS[name]
    train_shapes = [template_pattern(t) for t in task.pools("train").all_templates()]
    heldout_shapes = [template_pattern(t) for t in task.pools("heldout").all_templates()]
    for row in made[name].train:  # the patterns do recognise their own split's sentences
        for line in user_lines(prompt_messages(row)):
            assert any(p.fullmatch(line) for p in train_shapes), line
    for example in made[name].heldout:
        for line in user_lines(example.messages):
            assert not any(p.fullmatch(line) for p in train_shapes), line
            assert any(p.fullmatch(line) for p in heldout_shapes), line


@pytest.mark.parametrize("name", NAMES)
def test_openfts_validator_accepts_every_training_file(name, made):
    """The same check the API runs before a job is queued (``contract.chat_format``)."""
    data = made[name]
    examples = read_examples(to_jsonl(data.train).splitlines(), data.method)
    assert examples == data.train


def test_dpo_rows_are_refused_as_supervised_and_supervised_rows_as_dpo(made):
    """The method each task declares is the only one its file passes."""
    from contract.chat_format import InvalidChatFile

    with pytest.raises(InvalidChatFile, match="preference"):
        read_examples(to_jsonl(made["dpo_format"].train).splitlines(), "supervised")
    with pytest.raises(InvalidChatFile, match="supervised example"):
        read_examples(to_jsonl(made["classify"].train).splitlines(), "dpo")


@pytest.mark.parametrize("name", NAMES)
def test_the_metric_scores_the_right_answer_1_and_a_wrong_one_0(name):
    task = TASKS[name]
    items = draws(task, "heldout")
    for drawn, other in zip(items, items[1:] + items[:1], strict=True):
        answer = as_model_answer(drawn)
        assert task.score(answer, drawn.expected) == 1.0
        assert task.well_formed(answer)
        if other.expected != drawn.expected:
            assert task.score(as_model_answer(other), drawn.expected) == 0.0
        assert task.score("", drawn.expected) == 0.0
        assert task.score(None, drawn.expected) == 0.0


@pytest.mark.parametrize(("name", "answer", "expected", "score", "well_formed"), [
    ("flat_json", '{"name":"Eero","age":"41","city":"Baku"}',
     {"name": "Eero", "age": 41, "city": "Baku"}, 0.0, True),  # age as a string is wrong
    ("flat_json", '```json\n{"name":"Eero","age":41,"city":"Baku"}\n```',
     {"name": "Eero", "age": 41, "city": "Baku"}, 0.0, False),
    ("nested_json", '{"customer":"Eero","city":"Baku","items":[{"name":"figs","qty":2},'
     '{"name":"whisks","qty":3}]}', {"customer": "Eero", "city": "Baku", "items": [
         {"name": "whisks", "qty": 3}, {"name": "figs", "qty": 2}]}, 0.0, True),
    ("classify", " refund\n", "refund", 1.0, True),
    ("classify", "Refund", "refund", 0.0, False),
    ("classify", "The intent is refund.", "refund", 0.0, False),
    ("multi_turn", "17", "17", 1.0, True),
    ("multi_turn", "The total is 17.", "17", 0.0, False),
    ("rewrite", "Local Hero Eero Returns", "Local Hero Eero Returns", 1.0, True),
    ("rewrite", "Local hero Eero returns.", "Local Hero Eero Returns", 0.0, False),
    ("dpo_format", "Answer: Baku", "Baku", 1.0, True),
    ("dpo_format", "Answer: Tallinn", "Baku", 0.0, True),  # preferred form, wrong answer
    ("dpo_format", "Eero works in Baku.", "Baku", 0.0, False),  # right answer, other form
])
def test_metric_edge_cases(name, answer, expected, score, well_formed):
    task = TASKS[name]
    assert task.score(answer, expected) == score
    assert task.well_formed(answer) is well_formed


def test_the_metric_compares_tool_calls_by_name_and_parsed_arguments():
    expected = {"name": "send_money", "arguments": {"to": "Kwame", "amount": 30}}
    score = TASKS["tool_call"].score
    reordered = '{"amount": 30, "to": "Kwame"}'
    assert score([{"function": {"name": "send_money", "arguments": reordered}}], expected) == 1
    assert score('{"name": "send_money", "arguments": {"to": "Kwame", "amount": "30"}}',
                 expected) == 0
    assert score('{"name": "add_to_cart", "arguments": {"to": "Kwame", "amount": 30}}',
                 expected) == 0


CALL = {"name": "get_weather", "arguments": {"city": "Baku"}}


@pytest.mark.parametrize(("answer", "parsed"), [
    ([{"id": "abc123XYZ", "type": "function",
       "function": {"name": "get_weather", "arguments": '{"city": "Baku"}'}}], CALL),
    ([ChatCompletionMessageToolCall(id="c1", type="function", function={
        "name": "get_weather", "arguments": '{"city": "Baku"}'})], CALL),
    ('{"name": "get_weather", "arguments": {"city": "Baku"}}', CALL),
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Baku"}}\n</tool_call>', CALL),
    ('Sure! {"name": "get_weather", "parameters": {"city": "Baku"}}', CALL),  # Llama 3.1
    ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Baku\\"}"}', CALL),
    (CALL, CALL),
    ([{"function": {"name": "get_weather", "arguments": "{city: Baku}"}}], None),
    ('{"city": "Baku"}', None),
    ("It is sunny in Baku.", None),
    ([], None),
    (None, None),
])
def test_parse_tool_call_reads_tool_calls_and_text(answer, parsed):
    assert parse_tool_call(answer) == parsed


def test_tool_rows_are_openais_tool_format(made):
    names = {t["function"]["name"] for t in tool_call.TOOLS}
    for row in made["tool_call"].train:
        assert row["tools"] == tool_call.TOOLS
        (call,) = row["messages"][-1]["tool_calls"]
        assert call["type"] == "function" and call["function"]["name"] in names
        assert isinstance(json.loads(call["function"]["arguments"]), dict)
    for example in made["tool_call"].heldout:
        assert example.tools == tool_call.TOOLS


def test_multi_turn_trains_only_the_last_answer(made):
    """Earlier replies are weight 0: under a chat template, loss falls on the last one only."""
    def chatml(messages, tools, generation_prompt):
        text = "".join(f"<{m['role']}>{m['content']}</s>" for m in messages)
        return text + ("<assistant>" if generation_prompt else "")

    for row in made["multi_turn"].train:
        *earlier, last = [m for m in row["messages"] if m["role"] == "assistant"]
        assert earlier and all(m["weight"] == 0 for m in earlier)
        assert last.get("weight", 1) == 1
        full, spans = trained_spans(chatml, row["messages"])
        assert [full[s:e] for s, e in spans] == [last["content"] + "</s>"]
        # The answer depends on the earlier turns: it is the last total plus the last number.
        added = int(re.findall(r"\d+", row["messages"][-2]["content"])[0])
        assert int(last["content"]) == int(earlier[-1]["content"]) + added


def test_heldout_prompts_are_valid_chat_completions_messages(made):
    """``weight`` is a training-file key: the API's chat messages must not carry it."""
    for data in made.values():
        for example in data.heldout:
            assert all("weight" not in m for m in example.messages)
            assert example.messages[-1]["role"] == "user"


def test_dpo_outputs_differ_in_form_not_in_content(made):
    for row in made["dpo_format"].train:
        preferred = row["preferred_output"][0]["content"]
        rejected = row["non_preferred_output"][0]["content"]
        value = dpo_format.PREFERRED.fullmatch(preferred).group(1)
        assert value in rejected and not dpo_format.PREFERRED.fullmatch(rejected)


def test_every_label_is_trained_and_scored(made):
    from bench.quality.tasks.classify import LABELS

    trained = {row["messages"][-1]["content"] for row in made["classify"].train}
    scored = {example.expected for example in made["classify"].heldout}
    assert trained == scored == set(LABELS)


@pytest.mark.parametrize("name", NAMES)
def test_generation_is_deterministic_per_seed_and_differs_across_seeds(name):
    task = TASKS[name]
    assert task.make(1, 20, 10) == task.make(1, 20, 10)
    assert task.make(1, 20, 10) != task.make(2, 20, 10)
    # More training rows never change what is scored.
    assert task.make(1, 20, 10).heldout == task.make(1, 50, 10).heldout


def test_overlapping_pools_are_refused():
    pools = base.Pools(values={"city": ("Baku",)}, templates={"s": ("In {city}.",)})
    with pytest.raises(ValueError, match="Baku"):
        base.check_disjoint(pools, base.Pools(values={"c": ("Baku",)}, templates={}))


@pytest.mark.parametrize("module", [base, rewrite, tool_call])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0
