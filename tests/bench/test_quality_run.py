"""``bench/quality/run.py``'s pure parts: what the lead types, what the table says.

The runner's numbers are only as good as three things checked here without a stack: the
``--arm`` values reach the job as the user meant them (per method, per task), a reply is read
the way the task scores it (tool calls as calls, text as text), and the table's ``mean`` and
``worst`` rows, and its empty cells, say what happened (a skipped TRL peer shows as skipped,
never as a zero).
"""

from __future__ import annotations

import doctest
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessage

from bench.quality import jobs, local_model, report, run, score, trl_peer
from bench.quality.report import Cell, metric_table, notes, well_formed_table
from bench.quality.tasks import TASKS


@pytest.mark.parametrize("module", [jobs, report, run, score, trl_peer])
def test_doctests(module: object) -> None:
    assert doctest.testmod(module).failed == 0  # type: ignore[arg-type]


# --- arms --------------------------------------------------------------------------------


def test_default_is_one_auto_arm_and_all_tasks_but_native_tool_calls() -> None:
    args = run.parse_args([])
    assert args.arms == [jobs.Arm("auto", {})]
    assert "tool_call" not in args.tasks and "tool_call_text" in args.tasks
    assert set(args.tasks) == set(TASKS) - {"tool_call"}


def test_arms_repeat_in_order() -> None:
    args = run.parse_args(["--arm", "auto={}", "--arm", 'old={"n_epochs": 3}',
                           "--tasks", "classify, rewrite"])
    assert [(a.name, a.values) for a in args.arms] == [("auto", {}), ("old", {"n_epochs": 3})]
    assert args.tasks == ["classify", "rewrite"]


@pytest.mark.parametrize("argv", [
    ["--arm", "noequals"],
    ["--arm", "x=[1, 2]"],
    ["--arm", "x={not json"],
    ["--arm", "trl={}"],
    ["--arm", "a={}", "--arm", "a={}"],
    ["--tasks", "classify,nope"],
])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        run.parse_args(argv)


@pytest.mark.parametrize(("values", "method", "task", "expected"), [
    ({}, "supervised", "classify", {}),
    ({"n_epochs": 3}, "dpo", "dpo_format", {"n_epochs": 3}),
    ({"n_epochs": 3, "dpo": {"beta": 0.2}}, "supervised", "classify", {"n_epochs": 3}),
    ({"n_epochs": 3, "dpo": {"beta": 0.2}}, "dpo", "dpo_format", {"n_epochs": 3, "beta": 0.2}),
    ({"n_epochs": 3, "supervised": {"n_epochs": 4}, "rewrite": {"n_epochs": 5}},
     "supervised", "rewrite", {"n_epochs": 5}),
    ({"n_epochs": 3, "supervised": {"n_epochs": 4}, "rewrite": {"n_epochs": 5}},
     "supervised", "classify", {"n_epochs": 4}),
])
def test_arm_values_per_method_and_task(values: dict, method: str, task: str,
                                        expected: dict) -> None:
    assert jobs.hyperparameters(jobs.Arm("x", values), method, task) == expected  # type: ignore[arg-type]


def test_job_method_is_what_the_sdk_sends() -> None:
    assert jobs.job_method("supervised", {}) == {"type": "supervised"}
    assert jobs.job_method("dpo", {"beta": 0.2, "n_epochs": 2}) == {
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}}


# --- reading replies ---------------------------------------------------------------------


def _reply(message: dict) -> ChatCompletionMessage:
    completion = ChatCompletion.model_validate({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": message}]})
    return completion.choices[0].message


def test_a_tool_call_reply_is_scored_as_the_call() -> None:
    task = TASKS["tool_call"]
    item = task.make(seed=0, n_train=1, n_heldout=1).heldout[0]
    call = {"id": "call_1", "type": "function", "function": {
        "name": item.expected["name"], "arguments": json.dumps(item.expected["arguments"])}}
    answer = score.answer_of(_reply({"role": "assistant", "content": None,
                                     "tool_calls": [call]}))
    assert task.score(answer, item.expected) == 1.0
    assert score.plain(answer) == [call]


def test_a_text_reply_is_its_text_and_a_call_written_as_text_still_counts() -> None:
    task = TASKS["tool_call_text"]
    item = task.make(seed=0, n_train=1, n_heldout=1).heldout[0]
    text = json.dumps({"name": item.expected["name"], "arguments": item.expected["arguments"]})
    answer = score.answer_of(_reply({"role": "assistant", "content": text}))
    assert answer == text
    assert task.score(answer, item.expected) == 1.0
    assert score.answer_of(_reply({"role": "assistant", "content": None})) == ""


def test_scored_is_the_share_right_and_the_share_well_formed() -> None:
    task = TASKS["classify"]
    items = task.make(seed=0, n_train=1, n_heldout=4).heldout
    answers = [items[0].expected, items[1].expected, "no idea", "other" if
               items[3].expected != "other" else "billing"]
    cell = score.scored(task, items, answers, tokens=100, seconds=60.0)
    assert (cell.metric, cell.well_formed, cell.tokens, cell.seconds) == (0.5, 0.75, 100, 60.0)
    with pytest.raises(ValueError):
        score.scored(task, items, answers[:2])


# --- the table ---------------------------------------------------------------------------

ARMS = ["base", "auto", "trl"]
SKIPPED = "skipped: trl not installed (the `bench` extra)"


def _cells() -> dict[str, dict[str, Cell]]:
    return {
        "classify": {"base": Cell(0.2, 0.9), "auto": Cell(0.8, 1.0, 1000, 300.0),
                     "trl": Cell(None, None, note=SKIPPED)},
        "dpo_format": {"base": Cell(0.0, 0.1), "auto": Cell(0.6, 0.7, 3000, 600.0),
                       "trl": Cell(None, None, note=SKIPPED)},
    }


def _rows(table: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    return {row[0]: row[1:] for row in rows[2:]} | {"header": rows[0][1:]}


def test_metric_table_has_every_arm_then_costs_of_trained_arms() -> None:
    rows = _rows(metric_table(_cells(), ARMS))
    assert rows["header"] == ["base", "auto", "trl", "auto tokens", "auto min", "trl tokens",
                              "trl min"]
    assert rows["classify"] == ["0.20", "0.80", "skipped", "1000", "5.0", "-", "-"]
    assert rows["**mean**"] == ["0.10", "0.70", "-", "2000", "7.5", "-", "-"]
    assert rows["**worst**"] == ["0.00", "0.60", "-", "3000", "10.0", "-", "-"]


def test_well_formed_table_has_no_costs() -> None:
    rows = _rows(well_formed_table(_cells(), ARMS))
    assert rows["header"] == ARMS
    assert rows["dpo_format"] == ["0.10", "0.70", "skipped"]
    assert rows["**worst**"] == ["0.10", "0.70", "-"]


def test_a_failed_arm_shows_failed_and_the_mean_takes_the_other_tasks() -> None:
    cells = _cells()
    cells["dpo_format"]["auto"] = Cell(None, None, note="failed: job ftjob-1 failed: oom")
    rows = _rows(metric_table(cells, ARMS))
    assert rows["dpo_format"][1] == "failed"
    assert rows["**mean**"][1] == "0.80"


def test_notes_give_each_reason_once_with_its_tasks() -> None:
    assert notes(_cells()) == [f"- `trl` on classify, dpo_format: {SKIPPED}"]
    assert notes({"classify": {"base": Cell(0.5, 1.0)}}) == []


def test_report_names_the_run_and_the_skipped_peer() -> None:
    result = {"settings": {"base_model": "SmolLM2-135M-Instruct", "seed": 0, "n_train": 160,
                           "n_heldout": 36, "max_tokens": 96},
              "argv": ["--no-trl"], "date": "2026-12-07 01:00 UTC", "machine": "Linux x86_64",
              "code": "abc1234", "total_seconds": 12.0,
              "arms_described": {"base": "as served", "auto": jobs.described(jobs.Arm("auto", {})),
                                 "trl": trl_peer.described(None, SKIPPED)},
              "metrics": {"classify": "label", "dpo_format": "form"}}
    text = report.render(result, _cells(), ARMS)
    assert "SmolLM2-135M-Instruct" in text and "abc1234" in text and "Seed 0" in text
    assert f"TRL peer {SKIPPED}" in text
    assert "| classify | 0.20 | 0.80 | skipped |" in text


def test_trl_rows_train_the_last_assistant_message_only() -> None:
    data = TASKS["multi_turn"].make(seed=0, n_train=2, n_heldout=1)
    for row, upload in zip(trl_peer.trl_rows(data), data.train, strict=True):
        assert row["completion"] == [{k: v for k, v in upload["messages"][-1].items()
                                      if k != "weight"}]
        assert all("weight" not in m for m in row["prompt"])
        assert row["prompt"][-1]["role"] == "user"
    dpo = TASKS["dpo_format"].make(seed=0, n_train=2, n_heldout=1)
    assert {tuple(r) for r in trl_peer.trl_rows(dpo)} == {("prompt", "chosen", "rejected")}


def test_resolved_hyperparameters_come_from_each_job_method() -> None:
    record = {"dpo_format": {
        "base": {"answers": []},
        "auto": {"job": {"method": {"type": "dpo", "supervised": None,
                                    "dpo": {"hyperparameters": {"n_epochs": 5, "beta": 0.1}}}}},
        "old": {"job": {"method": None}},
        "trl": {"settings": {"trainer": "DPOTrainer", "beta": 0.1}},
    }}
    assert run.resolved(record) == {"dpo_format": {"auto": {"n_epochs": 5, "beta": 0.1}}}
    assert run.trl_settings(record) == {"DPOTrainer": {"trainer": "DPOTrainer", "beta": 0.1}}
    text = trl_peer.described(run.trl_settings(record), None)
    assert 'DPOTrainer: `{"beta": 0.1}`' in text


def test_trl_trains_the_folder_the_stack_serves(monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENFT_BASE_MODELS", json.dumps(
        {"tiny-llama": "/models/tiny", "big": {"volume_path": "/models/big"}}))
    assert str(run.base_model_dir(run.parse_args(["--base-model", "tiny-llama"]), None)) == \
        "/models/tiny"
    assert str(run.base_model_dir(run.parse_args(["--base-model", "big"]), None)) == "/models/big"
    args = run.parse_args(["--base-model-dir", "/elsewhere"])
    assert str(run.base_model_dir(args, None)) == "/elsewhere"
    default = run.parse_args([])
    assert run.base_model_dir(default, run.Path("/data")) == \
        run.Path("/data/models/SmolLM2-135M-Instruct")


def test_the_report_never_holds_the_api_key(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path) -> None:
    """Reports are committed: a run against a running stack names its key on the command line,
    and the key must not reach ``quality.md`` or ``quality.json``."""
    monkeypatch.setattr(run, "run_api", lambda *a, **k: None)
    monkeypatch.setattr(run, "OpenAI", lambda **k: None)
    key = "sk-openft-secret-key-value"
    assert run.main(["--base-url", "http://127.0.0.1:9/v1", "--api-key", key, "--no-trl",
                     "--tasks", "classify", "--results-dir", str(tmp_path)]) == 0
    for name in ("quality.md", "quality.json"):
        text = (tmp_path / name).read_text()
        assert key not in text
        assert "--api-key '***'" in text or "--api-key ***" in text


# --- arms that resolve alike -------------------------------------------------------------


class _FakeAPI:
    """The few calls ``run_api`` makes, in memory: a fast seam beside the real runs of the
    sweep (``bench/results/quality-sweep/``). A job resolves ``n_epochs`` (``auto``: 3) the way
    the service's validation does, and a model answers every held-out item right only when it
    trained 6 epochs, so two arms' numbers differ exactly when their models do."""

    def __init__(self, expected: dict[str, str]) -> None:
        self.expected = expected
        self.jobs: dict[str, dict] = {}
        self.asked: list[str] = []
        self.files = SimpleNamespace(create=lambda **_: SimpleNamespace(id="file-1"))
        self.fine_tuning = SimpleNamespace(jobs=SimpleNamespace(
            create=self._create, retrieve=self._retrieve, cancel=self._cancel))
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._complete))

    def _create(self, *, model: str, method: dict, suffix: str, **_: object) -> SimpleNamespace:
        given = method.get(method["type"], {}).get("hyperparameters", {})
        job_id = f"ftjob-{len(self.jobs)}"
        self.jobs[job_id] = {"status": "queued", "suffix": suffix, "method": {
            "type": method["type"],
            method["type"]: {"hyperparameters": {
                "n_epochs": given.get("n_epochs", 3),
                **({"full_finetune": True} if given.get("full_finetune") else {})}}}}
        return SimpleNamespace(id=job_id)

    def _retrieve(self, job_id: str) -> SimpleNamespace:
        job = self.jobs[job_id]
        epochs = job["method"][job["method"]["type"]]["hyperparameters"]["n_epochs"]
        status, job["status"] = job["status"], ("succeeded" if job["status"] == "queued"
                                                else job["status"])
        return SimpleNamespace(
            id=job_id, status=status, fine_tuned_model=f"ft:m:{job_id}:e{epochs}",
            trained_tokens=100 * epochs, created_at=0, finished_at=60 * epochs, error=None,
            method=SimpleNamespace(model_dump=lambda: job["method"]))

    def _cancel(self, job_id: str) -> None:
        self.jobs[job_id]["status"] = "cancelled"

    def _complete(self, *, model: str, messages: list[dict], **_: object) -> ChatCompletion:
        self.asked.append(model)
        right = self.expected[messages[-1]["content"]]
        return ChatCompletion.model_validate({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": right if model.endswith(":e6") else "?"}}]})


def test_an_arm_that_resolves_an_earlier_arms_hyperparameters_reuses_its_model(tmp_path) -> None:
    args = run.parse_args(["--tasks", "classify", "--n-heldout", "4", "--no-trl",
                           "--arm", 'old={"n_epochs": 3}', "--arm", "auto={}",
                           "--arm", 'ep6={"n_epochs": 6}'])
    data = {"classify": TASKS["classify"].make(0, n_train=8, n_heldout=4)}
    api = _FakeAPI({item.messages[-1]["content"]: item.expected
                    for item in data["classify"].heldout})
    cells: dict[str, dict[str, Cell]] = {"classify": {}}
    record: dict = {}
    run.run_api(api, args, data, cells, record, tmp_path)  # type: ignore[arg-type]

    by_arm = cells["classify"]
    # auto resolved old's 3 epochs: its job was cancelled, old's model stands for it
    assert [j["status"] for j in api.jobs.values()] == ["succeeded", "cancelled", "succeeded"]
    assert by_arm["auto"] == replace(by_arm["old"], same_as="old")
    assert record["classify"]["auto"]["same_as"] == "old"
    # each model that trained was asked once per item; the base model too
    assert sorted(set(api.asked)) == ["SmolLM2-135M-Instruct", "ft:m:ftjob-0:e3",
                                      "ft:m:ftjob-2:e6"]
    assert len(api.asked) == 3 * 4
    assert (by_arm["old"].metric, by_arm["ep6"].metric) == (0.0, 1.0)
    assert by_arm["ep6"].same_as is None
    assert report.shared(cells) == [
        "- `auto` on classify: resolved what `old` resolved, so the model of `old`"]
    assert report.notes(cells) == []


def test_no_base_leaves_the_base_model_unasked_and_says_so(tmp_path) -> None:
    args = run.parse_args(["--tasks", "classify", "--n-heldout", "4", "--no-trl", "--no-base",
                           "--arm", "auto={}"])
    data = {"classify": TASKS["classify"].make(0, n_train=8, n_heldout=4)}
    api = _FakeAPI({item.messages[-1]["content"]: item.expected
                    for item in data["classify"].heldout})
    cells: dict[str, dict[str, Cell]] = {"classify": {}}
    run.run_api(api, args, data, cells, {}, tmp_path)  # type: ignore[arg-type]
    assert "SmolLM2-135M-Instruct" not in api.asked and len(api.asked) == 4
    assert cells["classify"]["base"].metric is None
    assert report.notes(cells) == ["- `base` on classify: skipped: --no-base"]


def test_a_full_fine_tune_is_downloaded_and_answered_locally(monkeypatch, tmp_path) -> None:
    """The shared deployment serves adapters only (a full fine-tune's chat is a 400), so the
    runner fetches such a model through the API and answers with transformers instead."""
    args = run.parse_args(["--tasks", "classify", "--n-heldout", "4", "--no-trl", "--no-base",
                           "--arm", 'full={"full_finetune": true, "n_epochs": 6}'])
    data = {"classify": TASKS["classify"].make(0, n_train=8, n_heldout=4)}
    items = data["classify"].heldout
    api = _FakeAPI({item.messages[-1]["content"]: item.expected for item in items})
    fetched: list[str] = []

    def download(client, model, into):
        fetched.append(model)
        assert into.parent == tmp_path  # the run's scratch folder
        return tmp_path / "model"

    def answers(model_dir, asked, **_):
        assert model_dir == tmp_path / "model"
        return [item.expected for item in asked]

    monkeypatch.setattr(local_model, "download", download)
    monkeypatch.setattr(local_model, "answers", answers)
    cells: dict[str, dict[str, Cell]] = {"classify": {}}
    run.run_api(api, args, data, cells, {}, tmp_path)  # type: ignore[arg-type]
    assert api.asked == [] and fetched == ["ft:m:ftjob-0:e6"]
    assert cells["classify"]["full"].metric == 1.0
    assert report.notes(cells)[-1] == f"- `full` on classify: {local_model.NOTE}"
