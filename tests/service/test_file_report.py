"""``GET /v1/files/{id}/report`` as a user calls it, on real SeaweedFS and both databases:
tokens as training's labels count them, duplicates, leaked validation rows, each kind of
secret, truncation, the estimate from recorded throughput, another organization's file a 404;
and the report at validation: its summary event, and ``data_checks`` failing a job."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.db import JobRow
from service.jobs.scheduler import Scheduler
from tests.service.fake_ray import node
from tests.service.test_files_and_auth import assert_envelope, upload
from tests.service.test_jobs_api import create_job

JOBS = "/v1/fine_tuning/jobs"
LONG = ("Explain in a few sentences why the sky looks blue on a clear day and why sunsets "
        "look red, for a curious ten year old who likes science and asks a lot")


def row(question: str, answer: str, **extra: Any) -> str:
    return json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": question},
                                    {"role": "assistant", "content": answer}], **extra})


def filler(i: int) -> str:
    """Rows no two of which are near each other."""
    return row(f"Question {i}: how many legs do {i} spiders have?", f"{i * 8} legs.")


def jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def report(client, headers, file_id: str, **params: Any):
    return client.get(f"/v1/files/{file_id}/report", headers=headers, params=params)


SECRETS = {  # line -> (kind, text in the user turn)
    14: ("email", "Mail me at jane.doe@example.com"),
    15: ("phone", "Call +44 20 7946 0958 tonight"),
    16: ("card", "My card is 4111 1111 1111 1111"),
    18: ("iban", "Pay to GB82 WEST 1234 5698 7654 32"),
    19: ("ip_address", "The server is 10.20.30.40"),
    20: ("api_key", "Use key sk-proj-abcdefghijklmnopqrstuvwxyz123456"),
    21: ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n"
                        "-----END OPENSSH PRIVATE KEY-----"),
}


def training_lines() -> list[str]:
    lines = [filler(i) for i in range(1, 11)]  # lines 1-10
    lines.append(filler(2).replace("Question 2:", "Question  2: "))  # 11: line 2 again
    lines.append(row(LONG, "Rayleigh scattering."))  # 12
    lines.append(row(LONG + " please", "Rayleigh scattering."))  # 13: nearly line 12
    for n in range(14, 22):
        kind_text = SECRETS.get(n)
        # line 17: a 16-digit number that fails Luhn is no card
        text = kind_text[1] if kind_text else "Order 4111 1111 1111 1112 shipped"
        lines.append(row(text, f"Noted, item {n}."))
    return lines


def test_report_counts_duplicates_and_secrets(client, as_a, tiny_model_dir):
    from transformers import AutoTokenizer

    from training.chat_template import tokenize_chat

    lines = training_lines()
    file_id = upload(client, as_a, jsonl(lines)).json()["id"]
    resp = report(client, as_a, file_id)
    assert resp.status_code == 200, resp.text
    r = resp.json()
    assert (r["object"], r["file_id"], r["model"], r["rows"]) == (
        "file.report", file_id, "tiny-llama", 21)
    assert r["max_seq_length"] == 1024  # the model's context
    assert r["validation"] is None and r["per_row_truncated"] is False
    # Trained tokens per row are training's own labels (!= -100) on the same tokenizer.
    hf = AutoTokenizer.from_pretrained(tiny_model_dir)
    for entry, line in zip(r["per_row"], lines, strict=True):
        labels = tokenize_chat(hf, json.loads(line)["messages"], 1024)
        assert (entry["trained"], entry["total"]) == (labels.num_trained_tokens,
                                                      labels.num_tokens)
    assert r["tokens"] == {k: sum(e[k] for e in r["per_row"])
                           for k in ("trained", "untrained", "total")}
    assert 0 < r["tokens"]["trained"] < r["tokens"]["untrained"]

    assert r["duplicates"]["exact"] == [{"lines": [2, 11]}]
    [near] = r["duplicates"]["near"]
    assert near["lines"] == [12, 13] and 0.8 <= near["similarity"] < 1

    found = {(f["line"], f["kind"]) for f in r["findings"]}
    assert found == {(line, kind) for line, (kind, _) in SECRETS.items()}
    for f in r["findings"]:
        assert "*" in f["excerpt"]
    excerpts = " ".join(f["excerpt"] for f in r["findings"])
    for secret in ("jane.doe", "7946 0958", "4111111111111111", "GB82WEST12345698765432",
                   "10.20.30.40", "abcdefghijklmnopqrstuvwxyz", "b3BlbnNzaC1rZXk"):
        assert secret not in excerpts

    preview = r["loss_preview"]
    assert [p["line"] for p in preview] == [1, 2, 3]
    trained = "".join(s["text"] for s in preview[0]["segments"] if s["trained"])
    untrained = "".join(s["text"] for s in preview[0]["segments"] if not s["trained"])
    assert "8 legs." in trained and "spiders" in untrained and "spiders" not in trained

    lengths = r["lengths"]
    assert lengths["min"] <= lengths["p50"] <= lengths["p90"] <= lengths["p99"] <= lengths["max"]
    assert sum(b["rows"] for b in lengths["histogram"]) == 21
    assert r["truncation"] == {"rows": 0, "lines": []}
    assert r["estimate"]["basis"] == "none" and r["estimate"]["jobs_measured"] == 0


def test_truncation_counts_rows_over_max_seq_length(client, as_a):
    lines = [filler(i) for i in range(1, 13)]
    for i in (3, 7):
        lines[i - 1] = row("Tell me a story. " + "Once upon a time " * 30, "The end.")
    file_id = upload(client, as_a, jsonl(lines)).json()["id"]
    whole = report(client, as_a, file_id).json()
    assert whole["truncation"] == {"rows": 0, "lines": []}
    short = max(e["total"] for e in whole["per_row"] if e["line"] not in (3, 7))
    r = report(client, as_a, file_id, max_seq_length=short).json()
    assert r["max_seq_length"] == short
    assert r["truncation"] == {"rows": 2, "lines": [3, 7]}
    assert r["lengths"]["max"] > short and r["lengths"] == whole["lengths"]
    by_line = {e["line"]: e for e in r["per_row"]}
    assert by_line[3]["total"] == short and by_line[3]["trained"] == 0  # the answer is cut
    assert r["tokens"]["total"] == whole["tokens"]["total"] - 2 * (
        by_line_whole := {e["line"]: e for e in whole["per_row"]})[3]["total"] + 2 * short
    assert by_line_whole[7]["trained"] > 0
    too_long = report(client, as_a, file_id, max_seq_length=4096)
    assert_envelope(too_long, 400, param="max_seq_length", code="invalid_value")


def test_validation_rows_found_in_the_training_file(client, as_a):
    train = training_lines()[:13]
    valid = [row(f"Validation question {i} about owls?", f"Owl answer {i}.") for i in range(12)]
    valid[3] = train[4]  # line 4: training line 5, exactly
    valid[5] = row(LONG + " now", "Rayleigh scattering.")  # line 6: nearly 12 and 13
    train_id = upload(client, as_a, jsonl(train)).json()["id"]
    valid_id = upload(client, as_a, jsonl(valid)).json()["id"]
    r = report(client, as_a, train_id, validation_file=valid_id).json()
    assert r["validation"]["file_id"] == valid_id and r["validation"]["rows"] == 12
    leaked = r["validation"]["leaked"]
    assert leaked[0] == {"line": 4, "training_lines": [5], "kind": "exact"}
    assert leaked[1]["line"] == 6 and leaked[1]["kind"] == "near"
    assert set(leaked[1]["training_lines"]) <= {12, 13} and leaked[1]["training_lines"]
    assert len(leaked) == 2


def test_a_dpo_file_counts_both_answers(client, as_a):
    def pair(i: int) -> str:
        return json.dumps({"input": {"messages": [{"role": "user", "content": f"Pick {i}"}]},
                           "preferred_output": [{"role": "assistant", "content": f"Yes {i}"}],
                           "non_preferred_output": [{"role": "assistant",
                                                     "content": f"No way, {i}, never"}]})

    file_id = upload(client, as_a, jsonl([pair(i) for i in range(12)])).json()["id"]
    chat_id = upload(client, as_a, jsonl([row(f"Pick {i}", f"Yes {i}")
                                          for i in range(12)])).json()["id"]
    dpo, chat = report(client, as_a, file_id).json(), report(client, as_a, chat_id).json()
    assert dpo["rows"] == 12
    # Both conversations of a line: more trained tokens than the preferred answer alone.
    assert all(d["trained"] > c["trained"] > 0
               for d, c in zip(dpo["per_row"], chat["per_row"], strict=True))


def succeed(app, job_id: str, tokens: int, seconds: int, **fields: Any) -> None:
    """Settle a job as a finished run would have: ``tokens`` trained in ``seconds``."""
    with app.state.ctx.db.session() as s:
        job = s.get(JobRow, job_id)
        job.status, job.trained_tokens = "succeeded", tokens
        job.started_at, job.finished_at = 1_000_000, 1_000_000 + seconds
        for key, value in fields.items():
            setattr(job, key, value)


def validated_job(client, app, headers, file_id: str) -> dict:
    job = create_job(client, headers, file_id).json()
    Scheduler(app.state.ctx).validate(job["id"])
    job = client.get(f"{JOBS}/{job['id']}", headers=headers).json()
    assert job["status"] == "queued", job
    return job


def test_the_estimate_comes_from_recorded_throughput(client, app, as_a, as_b):
    file_id = upload(client, as_a, jsonl([filler(i) for i in range(1, 13)])).json()["id"]
    first = validated_job(client, app, as_a, file_id)
    succeed(app, first["id"], tokens=6000, seconds=10)
    # Another organization's job of the same model measures this deployment too.
    other = validated_job(client, app, as_b, upload(client, as_b).json()["id"])
    succeed(app, other["id"], tokens=2000, seconds=10)
    # Not measured: a run with a pause in its run time, and a failed job.
    succeed(app, validated_job(client, app, as_a, file_id)["id"], tokens=10, seconds=1000,
            run_count=2)
    succeed(app, validated_job(client, app, as_a, file_id)["id"], tokens=10, seconds=1000,
            status="failed")

    r = report(client, as_a, file_id, n_epochs=2).json()
    e = r["estimate"]
    tokens = r["tokens"]["total"] * 2
    workers = other["method"]["supervised"]["hyperparameters"]["num_workers"]
    assert e["basis"] == "measured" and e["jobs_measured"] == 2
    assert e["tokens_per_second"] == 400.0 and e["epochs"] == 2 and e["tokens"] == tokens
    assert e["seconds"] == round(tokens / 400, 1)
    assert e["gpus"] == 0 and e["gpu_hours"] == 0.0  # a CPU cluster
    assert e["worker_hours"] == round(tokens / 400 * workers / 3600, 4)


def test_gpu_hours_count_the_gpus_the_measured_run_held(client, app, as_a):
    app.state.ctx.ray.nodes = [node(cpus=8, gpus=2)]
    file_id = upload(client, as_a, jsonl([filler(i) for i in range(1, 13)])).json()["id"]
    job = validated_job(client, app, as_a, file_id)
    succeed(app, job["id"], tokens=3600, seconds=9)
    e = report(client, as_a, file_id).json()["estimate"]
    workers = job["method"]["supervised"]["hyperparameters"]["num_workers"]
    assert e["tokens_per_second"] == 400.0 and e["gpus"] == workers >= 1
    assert e["gpu_hours"] == round(e["tokens"] / 400 * workers / 3600, 4)
    # The report's default epochs are the auto rule's: 12 rows, ceil(100 / 12) = 9.
    assert e["epochs"] == 9


def test_refusals_are_enveloped(client, app, as_a, as_b):
    file_id = upload(client, as_a).json()["id"]
    theirs = upload(client, as_b).json()["id"]
    missing = report(client, as_b, file_id)
    assert_envelope(missing, 404, param="file_id")
    err, nope = missing.json()["error"], report(client, as_b, "file-nope").json()["error"]
    assert {**err, "message": err["message"].replace(file_id, "file-nope")} == nope
    assert_envelope(report(client, as_a, file_id, validation_file=theirs), 404,
                    param="validation_file")
    assert_envelope(report(client, as_a, file_id, model="no-such-model"), 404, param="model",
                    code="model_not_found")
    bad = upload(client, as_a, jsonl([filler(i) for i in range(1, 4)] + ['{"messages": ['] +
                                     [filler(i) for i in range(5, 13)])).json()["id"]
    resp = report(client, as_a, bad)
    assert_envelope(resp, 400, param="file_id", code="invalid_training_file")
    assert "Line 4 is not valid JSON" in resp.json()["error"]["message"]
    with app.state.ctx.db.session() as s:
        from service.files.service import register

        results = register(s, "org-a", "files/results.csv", "step.csv", "fine-tune-results",
                           10).id
    assert_envelope(report(client, as_a, results), 400, param="file_id", code="invalid_file")


# ---- at validation: the summary event and the opt-in checks


def events(client, headers, job_id: str) -> list[dict]:
    return client.get(f"{JOBS}/{job_id}/events", headers=headers,
                      params={"limit": 100}).json()["data"]


def test_every_job_gets_the_report_summary_at_validation(client, app, as_a):
    train_id = upload(client, as_a, jsonl(training_lines())).json()["id"]
    job = validated_job(client, app, as_a, train_id)
    [summary] = [e for e in events(client, as_a, job["id"])
                 if e["message"].startswith("Data report:")]
    data = summary["data"]
    assert summary["level"] == "info" and summary["type"] == "message"
    assert (data["rows"], data["exact_duplicate_groups"], data["near_duplicate_pairs"]) == (
        21, 1, 1)
    assert data["findings"] == 7 and data["finding_lines"] == sorted(SECRETS)
    assert data["truncated_rows"] == 0 and data["leaked_rows"] == 0
    assert data["trained_tokens"] > 0 and data["estimate"]["basis"] == "none"
    assert "14, 15, 16, 18, 19, 20, 21" in summary["message"]


def test_data_checks_fail_a_job_naming_the_lines(client, app, as_a):
    train_id = upload(client, as_a, jsonl(training_lines())).json()["id"]
    secrets = create_job(client, as_a, train_id, data_checks={"fail_on_secrets": True}).json()
    Scheduler(app.state.ctx).validate(secrets["id"])
    job = client.get(f"{JOBS}/{secrets['id']}", headers=as_a).json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "data_check_failed"
    assert job["error"]["param"] == "training_file"
    assert "line 14 (email j***@example.com)" in job["error"]["message"]
    assert "jane.doe" not in job["error"]["message"]

    clean = upload(client, as_a, jsonl([filler(i) for i in range(1, 13)])).json()["id"]
    valid = [row(f"Owls {i}?", f"Owl {i}.") for i in range(11)] + [filler(5)]
    valid_id = upload(client, as_a, jsonl(valid)).json()["id"]
    leak = create_job(client, as_a, clean, validation_file=valid_id,
                      data_checks={"fail_on_leakage": True, "fail_on_secrets": True}).json()
    Scheduler(app.state.ctx).validate(leak["id"])
    job = client.get(f"{JOBS}/{leak['id']}", headers=as_a).json()
    assert job["status"] == "failed" and job["error"]["param"] == "validation_file"
    assert "line 12 (exact, training line(s) 5)" in job["error"]["message"]

    # Without the opt-in the same data trains; the summary still names the leak.
    plain = create_job(client, as_a, clean, validation_file=valid_id).json()
    Scheduler(app.state.ctx).validate(plain["id"])
    assert client.get(f"{JOBS}/{plain['id']}", headers=as_a).json()["status"] == "queued"
    [summary] = [e for e in events(client, as_a, plain["id"])
                 if e["message"].startswith("Data report:")]
    assert summary["data"]["leaked_lines"] == [12]


@pytest.mark.parametrize("checks", [{"fail_on_secrets": "yes"}, {"fail_on_pii": True}])
def test_data_checks_are_strict(client, as_a, checks):
    file_id = upload(client, as_a).json()["id"]
    resp = create_job(client, as_a, file_id, data_checks=checks)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"].startswith("data_checks")
