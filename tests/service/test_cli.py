"""The ``openft`` command line, without a stack: its pure parts (progress and ETA from events,
SSE parsing, report rendering) and its commands through ``typer``'s runner, against the real
API app in process (files, jobs, models, errors) and against a stub server for the extensions
(data report, live events with a dropped connection, download, chat streaming)."""

from __future__ import annotations

import doctest
import gzip
import io
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import service.cli.client
import service.cli.events
import service.cli.progress
import service.cli.render
from service.cli import render
from service.cli.client import CliError, StreamLost
from service.cli.events import End, SseMessage, job_events, parse_sse
from service.cli.follow import BarView
from service.cli.main import app
from service.cli.progress import Progress, advance
from service.cli.state import Transport
from service.jobs.scheduler import Scheduler
from tests.service.cli_stub import (
    EMAIL,
    REPORT,
    Reply,
    Stub,
    error,
    event_object,
    file_object,
    flagged_jsonl,
    job_object,
    serving,
    sse,
)
from tests.service.conftest import KEY_A, chat_jsonl
from tests.test_import_contracts import lint_imports, tree_copy  # noqa: F401 - a fixture

WIDE = {"COLUMNS": "200", "NO_COLOR": "1"}


def openft(*args: str, base_url: str = "http://127.0.0.1:9/v1", key: str | None = KEY_A,
           transport: Transport | None = None, stdin: str | None = None):
    env = {**WIDE, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": key}
    return CliRunner().invoke(app, list(args), env=env, input=stdin,
                              obj=transport or Transport(max_retries=0))


# -- pure parts ------------------------------------------------------------------------------

@pytest.mark.parametrize("module", [service.cli.progress, service.cli.events,
                                    service.cli.render, service.cli.client])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


def metrics(n: int, at: int, step: int, total: int = 10, **losses: float) -> dict:
    return event_object(n, f"Step {step}/{total}", at=at,
                        metrics={"step": step, "total_steps": total, **losses})


def test_progress_and_eta_follow_the_events_own_times():
    events = [
        event_object(1, "Validating training file"),
        metrics(2, at=1000, step=1, train_loss=2.0),
        event_object(3, "Checkpoint saved"),
        metrics(4, at=1010, step=3, train_loss=1.5, valid_loss=1.7),
        metrics(5, at=1030, step=7, train_loss=1.0),
        metrics(6, at=1045, step=10, train_loss=0.8, full_valid_loss=0.9, valid_loss=1.1),
    ]
    seen = []
    p = Progress()
    for e in events:
        p = advance(p, e)
        seen.append((p.step, p.total_steps, p.train_loss, p.valid_loss, p.eta_seconds))
    assert seen == [
        (0, None, None, None, None),           # a message: nothing yet
        (1, 10, 2.0, None, None),              # one point: no pace yet
        (1, 10, 2.0, None, None),
        (3, 10, 1.5, 1.7, 35.0),               # 2 steps in 10 s, 7 left
        (7, 10, 1.0, 1.7, 15.0),               # 6 steps in 30 s, 3 left; valid loss kept
        (10, 10, 0.8, 0.9, 0.0),               # the whole-file loss wins over the sampled one
    ]
    assert service.cli.progress.line(p) == \
        "step 10/10  ETA 0:00:00  train loss 0.8000  valid loss 0.9000"


def test_sse_parsing_follows_the_spec():
    lines = ["id: 1", "event: fine_tuning.job.event", 'data: {"a":', "data: 1}", "",
             ": keep-alive", "", "data: no event name\r", "", "id: 2", "", "event: end",
             'data: {"status": "failed"}', ""]
    assert list(parse_sse(lines)) == [
        SseMessage("fine_tuning.job.event", '{"a":\n1}', "1"),
        SseMessage("message", "no event name", "1"),
        SseMessage("end", '{"status": "failed"}', "2"),  # an id alone sets the last id
    ]


class FakeStream:
    """Opens scripted streams: each try yields its lines, then raises what it was given."""

    def __init__(self, *tries: tuple[list[str], Exception | None]) -> None:
        self.tries, self.afters = list(tries), []

    @contextmanager
    def __call__(self, after: str | None) -> Iterator[Iterator[str]]:
        self.afters.append(after)
        lines, failure = self.tries.pop(0)

        def read() -> Iterator[str]:
            yield from lines
            if failure:
                raise failure
        yield read()


def sse_lines(*messages) -> list[str]:
    return [line for chunk in sse(*messages) for line in chunk.decode().split("\n")]


def test_events_resume_after_the_last_one_received_and_stop_at_end():
    e1, e2, e3 = (event_object(n, f"m{n}") for n in (1, 2, 3))
    stream = FakeStream(
        (sse_lines(("ftevent-1", "fine_tuning.job.event", e1)), StreamLost("reset by peer")),
        ([], StreamLost("refused")),
        (sse_lines(("ftevent-2", "fine_tuning.job.event", e2)), None),  # closed early
        (sse_lines(("ftevent-3", "fine_tuning.job.event", e3), ("", "end", {"status": "ok"})),
         None))
    waits: list[float] = []
    got = list(job_events(stream, "ftjob-1", sleep=waits.append))
    assert got == [e1, e2, e3, End("ok")]
    assert stream.afters == [None, "ftevent-1", "ftevent-1", "ftevent-2"]
    assert waits == [1.0, 2.0, 1.0]  # the wait grows while failing, resets after an event


def test_events_give_up_after_the_reconnects_allowed():
    stream = FakeStream(*[([], StreamLost("connection refused"))] * 4)
    with pytest.raises(CliError, match="after 3 reconnects: connection refused"):
        list(job_events(stream, "ftjob-1", reconnects=3, sleep=lambda s: None))


def test_the_terminal_bar_shows_step_eta_and_losses():
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=150, no_color=True)
    now = Progress()
    with BarView(console, "ftjob-1") as view:
        for e in [event_object(1, "Validating training file"),
                  metrics(2, at=1000, step=1, total=4, train_loss=2.0),
                  metrics(3, at=1010, step=3, total=4, train_loss=1.25, valid_loss=1.5),
                  event_object(4, "Final loss above the best checkpoint's", level="warn")]:
            now = advance(now, e)
            view.event(e, now)
    drawn = screen.getvalue()
    assert "Validating training file" in drawn and "warn: Final loss above" in drawn
    last = drawn.rsplit("\r", 1)[-1]
    assert "ftjob-1" in last and "step 3/4" in last and "ETA 0:00:05" in last
    assert "train loss 1.2500  valid loss 1.5000" in last


def rendered(renderable) -> str:
    console = Console(record=True, width=160, no_color=True)
    console.print(renderable)
    return console.export_text()


def test_report_rendering_shows_what_to_fix_before_training():
    text = rendered(render.report(REPORT))
    for expected in ["rows", "120", "tokens trained", "5,123", "tokens untrained", "7,045",
                     "12,168", "truncated at 1024 tokens", "2 rows (lines 17, 88)",
                     "p90 180", "max 1410",
                     "Duplicates: 1 exact, 1 near", "3, 41", "5, 9", "0.91",
                     "20 rows, 1 also in the training file", "4 ", "12 ",
                     "Possible personal data or secrets: 2", "57", "email", "j***@example.com",
                     "63", "api_key", "sk-A***",
                     "3 earlier jobs, 812.5 tokens/s", "36,504 (3 epochs)", "1:14:53", "1.248",
                     "<|user|>Hi", "Hello there!"]:
        assert expected in text, expected


def test_a_clean_report_without_history_says_so():
    clean = {**REPORT, "truncation": {"rows": 0, "lines": []}, "loss_preview": [],
             "duplicates": {"exact": [], "near": []}, "validation": None, "findings": [],
             "estimate": {"basis": "none", "jobs_measured": 0}}
    text = rendered(render.report(clean))
    assert "0 rows" in text and "no earlier job on this base model" in text
    assert "Duplicates" not in text and "secrets" not in text and "Validation" not in text


# -- commands against the real API app, in process --------------------------------------------

@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """SQLite only: the CLI reads what the routes answer; the database is not its concern."""
    from devstack.databases import database_for

    with database_for("sqlite", tmp_path) as url:
        yield url


@pytest.fixture
def in_process(client) -> Transport:
    return Transport(http_client=client, max_retries=0)


def test_files_jobs_and_models_commands_on_the_real_api(tmp_path: Path, in_process: Transport,
                                                       app):
    data = tmp_path / "train.jsonl"
    data.write_bytes(chat_jsonl())
    base = "http://testserver/v1"
    up = openft("files", "upload", str(data), "--no-report", "--json", base_url=base,
                transport=in_process)
    assert up.exit_code == 0, up.output
    file_id = json.loads(up.stdout)["id"]
    listed = openft("files", "list", base_url=base, transport=in_process)
    assert file_id in listed.stdout and "train.jsonl" in listed.stdout

    created = openft("jobs", "create", "--model", "tiny-llama", "--training-file", file_id,
                     "--suffix", "cli", "--epochs", "2", "--json", base_url=base,
                     transport=in_process)
    assert created.exit_code == 0, created.output
    job = json.loads(created.stdout)
    assert job["status"] == "validating_files" and job["hyperparameters"]["n_epochs"] == 2
    shown = openft("jobs", "get", job["id"], base_url=base, transport=in_process)
    assert "validating_files" in shown.stdout and "n_epochs=2" in shown.stdout
    page = json.loads(openft("jobs", "list", "--json", base_url=base,
                             transport=in_process).stdout)
    assert [j["id"] for j in page["data"]] == [job["id"]]
    Scheduler(app.state.ctx).validate(job["id"])  # queued: now it can be paused
    paused = openft("jobs", "pause", job["id"], "--json", base_url=base, transport=in_process)
    assert json.loads(paused.stdout)["status"] == "paused"
    resumed = openft("jobs", "resume", job["id"], base_url=base, transport=in_process)
    assert re.search(r"status\s+queued", resumed.stdout), resumed.output
    cancelled = openft("jobs", "cancel", job["id"], base_url=base, transport=in_process)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    events = openft("jobs", "events", job["id"], base_url=base, transport=in_process)
    assert events.exit_code == 0 and "cancel" in events.stdout.lower()

    models = openft("models", "list", base_url=base, transport=in_process)
    assert "tiny-llama" in models.stdout
    base_model = openft("models", "delete", "tiny-llama", base_url=base, transport=in_process)
    assert base_model.exit_code == 1 and "(code: permission_denied)" in base_model.stderr
    assert openft("files", "delete", file_id, base_url=base,
                  transport=in_process).stdout.strip() == f"Deleted {file_id}"


def test_upload_prints_the_real_report(in_process: Transport, tmp_path: Path):
    data = tmp_path / "train.jsonl"
    data.write_bytes(flagged_jsonl(12))
    base = "http://testserver/v1"
    shown = openft("files", "upload", str(data), "--model", "tiny-llama", base_url=base,
                   transport=in_process)
    assert shown.exit_code == 0, shown.output
    file_id = re.search(r"Uploaded train\.jsonl as (file-\S+)", shown.stdout).group(1)
    report = json.loads(openft("files", "report", file_id, "--model", "tiny-llama", "--json",
                               base_url=base, transport=in_process).stdout)
    out = shown.stdout
    assert re.search(r"│ rows\s+│ 13\s", out), out
    assert re.search(rf"│ tokens trained\s+│ {report['tokens']['trained']:,}\s", out), out
    assert re.search(rf"│ tokens untrained\s+│ {report['tokens']['untrained']:,}\s", out), out
    assert re.search(r"│ exact\s+│ 1, 13\s", out), out
    assert re.search(r"│ 4\s+│ email\s+│", out) and EMAIL not in out, out


def test_following_a_cancelled_job_reads_the_real_event_stream(in_process: Transport,
                                                                tmp_path: Path):
    """The app's own SSE framing (sse-starlette) read to its ``end`` message: a settled job
    replays its events and ends at once."""
    data = tmp_path / "train.jsonl"
    data.write_bytes(chat_jsonl())
    base = "http://testserver/v1"
    file_id = json.loads(openft("files", "upload", str(data), "--no-report", "--json",
                                base_url=base, transport=in_process).stdout)["id"]
    job_id = json.loads(openft("jobs", "create", "--model", "tiny-llama", "--training-file",
                               file_id, "--json", base_url=base,
                               transport=in_process).stdout)["id"]
    openft("jobs", "cancel", job_id, base_url=base, transport=in_process)
    followed = openft("jobs", "follow", job_id, base_url=base, transport=in_process)
    assert followed.exit_code == 1
    assert followed.stderr.strip() == f"job {job_id} cancelled"
    assert f"Created fine-tuning job: {job_id}" in followed.stdout  # the replayed first event
    assert re.search(r"status\s+cancelled", followed.stdout)
    as_json = openft("jobs", "follow", job_id, "--json", base_url=base, transport=in_process)
    listed = json.loads(openft("jobs", "events", job_id, "--json", "--limit", "100",
                               base_url=base, transport=in_process).stdout)["data"]
    streamed = [json.loads(line) for line in as_json.stdout.splitlines()][:-1]
    assert streamed == listed[::-1]  # every event, oldest first, as the list returns them


def test_api_errors_are_one_line_with_their_code(in_process: Transport):
    result = openft("jobs", "get", "ftjob-nope", base_url="http://testserver/v1",
                    transport=in_process)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and "(code: " in result.stderr
    assert "Traceback" not in result.output
    wrong_key = openft("files", "list", base_url="http://testserver/v1", key="sk-wrong",
                       transport=in_process)
    assert wrong_key.exit_code == 1 and "invalid_api_key" in wrong_key.stderr


def test_no_key_and_no_server_are_clear_errors():
    no_key = openft("files", "list", key=None)
    assert no_key.exit_code == 1 and "no API key: set OPENAI_API_KEY" in no_key.stderr
    down = openft("jobs", "list", base_url="http://127.0.0.1:9/v1")
    assert down.exit_code == 1
    assert "cannot reach the openft API at http://127.0.0.1:9/v1" in down.stderr
    assert "Traceback" not in down.output
    usage = openft("jobs", "create", "--model", "m")
    assert usage.exit_code == 2 and "--training-file" in usage.output


# -- commands against a stub, for the extensions ----------------------------------------------

@pytest.fixture
def stub() -> Stub:
    return Stub()


def test_upload_prints_the_data_report(stub: Stub, tmp_path: Path):
    data = tmp_path / "train.jsonl"
    data.write_bytes(chat_jsonl())
    stub.route("POST", "/v1/files", file_object("file-train", size=len(chat_jsonl())))
    stub.route("GET", "/v1/files/file-train/report", REPORT)
    with serving(stub) as url:
        result = openft("files", "upload", str(data), "--model", "tiny-llama",
                        "--validation-file", "file-valid", base_url=url)
        as_json = openft("files", "upload", str(data), "--json", base_url=url)
    assert result.exit_code == 0, result.output
    assert "Uploaded train.jsonl as file-train" in result.stdout
    assert "5,123" in result.stdout and "2 rows (lines 17, 88)" in result.stdout
    assert "j***@example.com" in result.stdout and "1:14:53" in result.stdout
    report_query = stub.seen("GET", "/v1/files/file-train/report")[0].query
    assert report_query == {"model": ["tiny-llama"], "validation_file": ["file-valid"]}
    assert b"fine-tune" in stub.seen("POST", "/v1/files")[0].body
    file_line, report_line = as_json.stdout.splitlines()
    assert json.loads(file_line)["id"] == "file-train" and json.loads(report_line) == REPORT


def test_a_report_refused_by_the_server_is_an_error(stub: Stub):
    stub.route("GET", "/v1/files/file-bad/report",
               error(400, "Line 3: no messages", "invalid_training_file"))
    with serving(stub) as url:
        result = openft("files", "report", "file-bad", base_url=url)
    assert result.exit_code == 1
    assert "Line 3: no messages (code: invalid_training_file)" in result.stderr


def job_run(stub: Stub, job_id: str, final: dict, *, drop_after: int = 2) -> list[dict]:
    """Live events of a job whose stream drops after ``drop_after`` events and resumes."""
    events = [event_object(1, "Validating training file", at=1000),
              *[metrics(n + 2, at=1000 + 5 * n, step=n + 1, total=4, train_loss=2.0 - n / 4)
                for n in range(4)],
              event_object(6, "Fine-tuning job " + final["status"], at=1030,
                           level="info" if final["status"] == "succeeded" else "error")]
    framed = [(e["id"], "fine_tuning.job.event", e) for e in events]

    def stream(request) -> Reply:
        after = request.headers.get("last-event-id")
        start = 0 if after is None else [e["id"] for e in events].index(after) + 1
        if after is None:
            return Reply(chunks=sse(*framed[:drop_after]),
                         headers={"content-type": "text/event-stream"}, drop=True)
        return Reply(chunks=[*sse(*framed[start:]), *sse(("", "end",
                                                         {"status": final["status"]}))],
                     headers={"content-type": "text/event-stream"})

    stub.route("GET", f"/v1/fine_tuning/jobs/{job_id}/events", stream)
    stub.route("GET", f"/v1/fine_tuning/jobs/{job_id}", final)
    return events


def test_follow_shows_progress_to_the_end_across_a_dropped_connection(stub: Stub):
    best = {"id": "ftckpt-3", "step_number": 3, "full_valid_loss": 0.4217,
            "fine_tuned_model_checkpoint": "ft:tiny-llama:org-a:s:abc:ckpt-step-3"}
    final = job_object("ftjob-1", "succeeded", fine_tuned_model="ft:tiny-llama:org-a:s:abc",
                       trained_tokens=1234, best_checkpoint=best)
    job_run(stub, "ftjob-1", final)
    with serving(stub) as url:
        result = openft("jobs", "follow", "ftjob-1", base_url=url)
    assert result.exit_code == 0, result.output
    out = result.stdout
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert lines == [f"step {n}/4  ETA {eta}  train loss {2.0 - (n - 1) / 4:.4f}  valid loss -"
                     for n, eta in ((1, "-:--:--"), (2, "0:00:10"), (3, "0:00:05"),
                                    (4, "0:00:00"))]
    assert out.count("Validating training file") == 1  # resumed after it, not replayed
    assert "Fine-tuning job succeeded" in out
    assert "ft:tiny-llama:org-a:s:abc" in out and "1,234" in out
    assert "ft:tiny-llama:org-a:s:abc:ckpt-step-3 (step 3, valid loss 0.4217)" in out
    tries = stub.seen("GET", "/v1/fine_tuning/jobs/ftjob-1/events")
    assert [t.headers.get("last-event-id") for t in tries] == [None, "ftevent-2"]
    assert all(t.headers["accept"] == "text/event-stream" for t in tries)


def test_follow_of_a_failed_job_exits_1_with_its_error(stub: Stub):
    final = job_object("ftjob-2", "failed", error={
        "message": "Training file has 3 examples; at least 10 are needed.",
        "code": "invalid_n_examples", "param": "training_file"})
    job_run(stub, "ftjob-2", final)
    with serving(stub) as url:
        result = openft("jobs", "follow", "ftjob-2", base_url=url)
        as_json = openft("jobs", "follow", "ftjob-2", "--json", base_url=url)
    assert result.exit_code == 1
    assert ("job ftjob-2 failed: Training file has 3 examples; at least 10 are needed. "
            "(code: invalid_n_examples)") in result.stderr
    assert as_json.exit_code == 1
    objects = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [o["object"] for o in objects] == ["fine_tuning.job.event"] * 6 + ["fine_tuning.job"]
    assert objects[-1]["status"] == "failed"


def test_follow_on_a_server_without_live_events_says_so(stub: Stub):
    stub.route("GET", "/v1/fine_tuning/jobs/ftjob-3/events",
               {"object": "list", "data": [], "has_more": False})
    with serving(stub) as url:
        result = openft("jobs", "follow", "ftjob-3", base_url=url)
    assert result.exit_code == 1 and "does not stream job events" in result.stderr


def test_follow_of_another_organizations_job_is_not_found(stub: Stub):
    stub.route("GET", "/v1/fine_tuning/jobs/ftjob-x/events",
               error(404, "No fine-tuning job ftjob-x", "fine_tuning_job_not_found"))
    with serving(stub) as url:
        result = openft("jobs", "follow", "ftjob-x", base_url=url)
    assert result.exit_code == 1
    assert "No fine-tuning job ftjob-x (code: fine_tuning_job_not_found)" in result.stderr
    assert len(stub.requests) == 1  # a 404 is an answer, not a reason to reconnect


def test_create_with_follow_sends_the_method_and_data_checks(stub: Stub):
    final = job_object("ftjob-4", "succeeded", fine_tuned_model="ft:tiny-llama:org-a::x")
    stub.route("POST", "/v1/fine_tuning/jobs", job_object("ftjob-4", "validating_files"))
    job_run(stub, "ftjob-4", final)
    with serving(stub) as url:
        result = openft("jobs", "create", "--model", "tiny-llama", "--training-file", "file-t",
                        "--method", "dpo", "--epochs", "2", "--beta", "0.2",
                        "--fail-on-secrets", "--follow", base_url=url)
    assert result.exit_code == 0, result.output
    body = json.loads(stub.seen("POST", "/v1/fine_tuning/jobs")[0].body)
    assert body["method"] == {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2,
                                                                         "beta": 0.2}}}
    assert body["data_checks"] == {"fail_on_secrets": True}
    assert "Created ftjob-4" in result.stdout and "step 4/4" in result.stdout


def test_checkpoints_mark_the_best(stub: Stub):
    stub.route("GET", "/v1/fine_tuning/jobs/ftjob-5/checkpoints", {"object": "list", "data": [
        {"id": f"ftckpt-{s}", "object": "fine_tuning.job.checkpoint", "created_at": 0,
         "fine_tuned_model_checkpoint": f"ft:m:ckpt-step-{s}", "fine_tuning_job_id": "ftjob-5",
         "step_number": s, "metrics": {"train_loss": 1 / s, "full_valid_loss": 0.5 + s / 10}}
        for s in (6, 4, 2)], "has_more": False})
    stub.route("GET", "/v1/fine_tuning/jobs/ftjob-5", job_object(
        "ftjob-5", "succeeded", best_checkpoint={"id": "ftckpt-2", "step_number": 2}))
    with serving(stub) as url:
        result = openft("jobs", "checkpoints", "ftjob-5", base_url=url)
    assert result.exit_code == 0, result.output
    starred = [line for line in result.stdout.splitlines() if "★" in line]
    assert len(starred) == 1 and "ft:m:ckpt-step-2" in starred[0] and "0.7000" in starred[0]


def test_download_streams_the_archive_to_disk(stub: Stub, tmp_path: Path):
    archive = gzip.compress(b"adapter bytes " * 50_000)
    model = "ft:tiny-llama:org-a:s:abc"
    stub.route("GET", f"/v1/models/{model}/download", Reply(
        chunks=[archive[i:i + 65536] for i in range(0, len(archive), 65536)],
        headers={"content-type": "application/gzip",
                 "content-disposition": 'attachment; filename="ft-tiny-llama-abc.tar.gz"'}))
    stub.route("GET", "/v1/models/ft:other/download",
               error(404, "The model 'ft:other' does not exist", "model_not_found"))
    with serving(stub) as url:
        into_dir = openft("models", "download", model, "-o", str(tmp_path), base_url=url)
        to_file = openft("models", "download", model, "-o", str(tmp_path / "a.tgz"), "--json",
                         base_url=url)
        missing = openft("models", "download", "ft:other", "-o", str(tmp_path / "b.tgz"),
                         base_url=url)
    assert into_dir.exit_code == 0, into_dir.output
    assert (tmp_path / "ft-tiny-llama-abc.tar.gz").read_bytes() == archive
    assert (tmp_path / "a.tgz").read_bytes() == archive
    assert json.loads(to_file.stdout) == {"model": model, "path": str(tmp_path / "a.tgz"),
                                          "bytes": len(archive)}
    assert missing.exit_code == 1 and "model_not_found" in missing.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz", "ft-tiny-llama-abc.tar.gz"]


def chat_stream(request) -> Reply:
    asked = json.loads(request.body)
    said = asked["messages"][-1]["content"]
    words = ["You", " said: ", said]
    chunks = [{"id": "c", "object": "chat.completion.chunk", "created": 0, "model":
               asked["model"], "choices": [{"index": 0, "delta": {"content": w},
                                            "finish_reason": None}]} for w in words]
    return Reply(chunks=[f"data: {json.dumps(c)}\n\n".encode() for c in chunks]
                 + [b"data: [DONE]\n\n"], headers={"content-type": "text/event-stream"})


def test_chat_one_shot_and_interactive(stub: Stub):
    stub.route("POST", "/v1/chat/completions", chat_stream)
    with serving(stub) as url:
        once = openft("chat", "ft:m", "--system", "Be terse.", "-m", "hi", base_url=url)
        repl = openft("chat", "ft:m", base_url=url, stdin="first\nsecond\n/exit\n")
    assert once.exit_code == 0, once.output
    assert once.stdout.strip().endswith("You said: hi")
    sent = json.loads(stub.requests[0].body)
    assert sent["stream"] is True and sent["messages"] == [
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]
    assert repl.exit_code == 0, repl.output
    assert "You said: first" in repl.stdout and "You said: second" in repl.stdout
    second = json.loads(stub.requests[-1].body)["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]  # the history is kept
    assert second[1]["content"] == "You said: first"


# -- the boundary ----------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "line", "contract"), [
    ("service/cli/client.py", "import service.errors\n", "service.cli speaks only HTTP"),
    ("service/jobs/service.py", "import service.cli.progress\n",
     "Nothing of the server imports the command line"),
])
def test_the_cli_boundary_contracts_catch_a_break(tree_copy: Path, path: str,  # noqa: F811
                                                  line: str, contract: str):
    target = tree_copy / path
    target.write_text(target.read_text() + "\n" + line)
    result = lint_imports(tree_copy)
    assert result.returncode != 0
    assert contract in result.stdout.split("Broken contracts", 1)[-1], result.stdout
