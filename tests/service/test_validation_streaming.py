"""Validation reads files as a stream: a line over ``OPENFT_MAX_LINE_BYTES`` fails its job at
once, naming the line; only token counts are kept. On the real S3 server (SeaweedFS)."""

from __future__ import annotations

import json
import time

import pytest

from contract.bucket import file_key
from contract.lines import split_lines
from service.jobs.scheduler import Scheduler
from service.jobs.token_count import FileTokens
from service.settings import Settings
from tests.service.conftest import chat_jsonl
from tests.service.test_files_and_auth import upload

JOBS = "/v1/fine_tuning/jobs"
CAP = 4096


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_line_bytes": CAP})


def long_line(n_bytes: int) -> str:
    """A valid chat example of about ``n_bytes``: only its length is wrong."""
    return json.dumps({"messages": [{"role": "user", "content": "x" * n_bytes},
                                    {"role": "assistant", "content": "ok"}]})


def with_line(index: int, line: str, n: int = 12) -> bytes:
    lines = chat_jsonl(n).decode().splitlines()
    lines[index] = line
    return ("\n".join(lines) + "\n").encode()


def validated(client, app, headers, **files: str) -> dict:
    job = client.post(JOBS, headers=headers, json={"model": "tiny-llama", **files}).json()
    Scheduler(app.state.ctx).validate(job["id"])
    return client.get(f"{JOBS}/{job['id']}", headers=headers).json()


def test_a_line_over_the_cap_fails_the_job_naming_the_line(client, app, as_a):
    file_id = upload(client, as_a, with_line(2, long_line(CAP))).json()["id"]
    job = validated(client, app, as_a, training_file=file_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_training_file"
    assert job["error"]["param"] == "training_file"
    message = job["error"]["message"]
    assert file_id in message and f"Line 3 is longer than {CAP} bytes" in message


def test_a_validation_line_over_the_cap_fails_as_invalid_validation_file(client, app, as_a):
    train_id = upload(client, as_a).json()["id"]
    valid_id = upload(client, as_a, with_line(5, long_line(CAP))).json()["id"]
    job = validated(client, app, as_a, training_file=train_id, validation_file=valid_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_validation_file"
    assert job["error"]["param"] == "validation_file"
    assert "Line 6 is longer" in job["error"]["message"]


def test_lines_up_to_the_cap_pass(client, app, as_a):
    line = long_line(CAP - 200)
    assert len(line) <= CAP
    file_id = upload(client, as_a, with_line(2, line)).json()["id"]
    assert validated(client, app, as_a, training_file=file_id)["status"] == "queued"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_20_mb_line_fails_in_seconds_under_the_default_cap(client, app, as_a):
    """botocore's iter_lines took 237 s to read such a line; the cap stops at 16 MiB."""
    app.state.ctx.settings.max_line_bytes = Settings.model_fields["max_line_bytes"].default
    file_id = upload(client, as_a, with_line(7, long_line(20 * 1024 * 1024))).json()["id"]
    started = time.monotonic()
    job = validated(client, app, as_a, training_file=file_id)
    assert time.monotonic() - started < 20
    assert job["status"] == "failed" and "Line 8 is longer than 16777216 bytes" in \
        job["error"]["message"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_bucket_reads_lines_across_its_chunks(client, app, as_a):
    """Lines of every length straddle the 1 MiB chunks S3 is read in."""
    lines = [b"y" * (i * 7919 % 300_000) for i in range(40)]
    body = b"\r\n".join(lines) + b"\n"
    file_id = upload(client, as_a, body).json()["id"]
    got = list(split_lines(app.state.ctx.blobs.iter_chunks(file_key(file_id)), 300_000))
    assert got == lines


def test_file_tokens_keep_counts_by_line():
    tokens = FileTokens()
    assert (tokens.n_examples, tokens.longest, tokens.n_tokens(10)) == (0, None, 0)
    assert tokens.truncated(10) == (0, [])
    for line, count in [(1, 5), (3, 20), (3, 12), (4, 8), (6, 30), (7, 11)]:
        tokens.add(line, count)  # line 3: a DPO line's two conversations
    assert (tokens.n_examples, tokens.longest) == (5, 30)
    assert tokens.n_tokens(limit=10) == 5 + 10 + 10 + 8 + 10 + 10
    assert tokens.truncated(limit=10) == (3, [3, 6, 7])
    assert tokens.truncated(limit=10, keep=2) == (3, [3, 6])
    assert tokens.truncated(limit=30) == (0, [])
