"""The ``openft`` console script against a running stack (``make run``'s launcher), as a user
runs it: a subprocess configured by ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``.

Upload prints the data report; ``jobs create --follow`` shows the run's progress to its last
step and exits 0; following a job that fails exits 1 with the job's error. The stack runs
without its serving app (``OPENFT_SERVING_URL`` points elsewhere): nothing here chats.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.stack import Stack, free_user_ports, running_stack
from tests.service.cli_stub import EMAIL, flagged_jsonl

pytestmark = pytest.mark.slow

OPENFT = str(Path(sys.executable).parent / "openft")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Stack]:
    env = {**free_user_ports(),
           "OPENFT_SERVING_URL": "http://127.0.0.1:9",  # no vLLM: these tests never chat
           "OPENFT_DEFAULT_BASE_MODEL": "false",
           "OPENFT_BASE_MODELS": json.dumps({"tiny-llama": str(tiny_model_dir)})}
    with running_stack(tmp_path_factory.mktemp("cli-stack"), env) as running:
        yield running


def openft(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "OPENAI_BASE_URL": stack.base_url,
           "OPENAI_API_KEY": stack.api_key, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([OPENFT, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def upload(stack: Stack, path: Path) -> str:
    done = openft(stack, "files", "upload", str(path), "--no-report", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["id"]


def test_upload_prints_the_data_report(stack: Stack, tmp_path: Path):
    data = tmp_path / "train.jsonl"
    data.write_bytes(flagged_jsonl(12))
    shown = openft(stack, "files", "upload", str(data), "--model", "tiny-llama")
    assert shown.returncode == 0, shown.stderr
    file_id = re.search(r"Uploaded train\.jsonl as (file-\S+)", shown.stdout).group(1)
    report = json.loads(openft(stack, "files", "report", file_id, "--model", "tiny-llama",
                               "--json").stdout)
    out = shown.stdout
    assert re.search(r"│ rows\s+│ 13\s", out), out
    assert re.search(rf"│ tokens trained\s+│ {report['tokens']['trained']:,}\s", out), out
    assert re.search(rf"│ tokens untrained\s+│ {report['tokens']['untrained']:,}\s", out), out
    assert "Duplicates: 1 exact" in out and re.search(r"│ exact\s+│ 1, 13\s", out), out
    assert "Possible personal data or secrets" in out
    assert re.search(r"│ 4\s+│ email\s+│", out) and EMAIL not in out, out  # masked
    assert "Estimate" in out


def test_create_follow_shows_progress_to_the_end_and_exits_0(stack: Stack, tmp_path: Path):
    data = tmp_path / "train.jsonl"
    data.write_bytes(flagged_jsonl(12))
    file_id = upload(stack, data)
    run = openft(stack, "jobs", "create", "--model", "tiny-llama", "--training-file", file_id,
                 "--suffix", "cli", "--epochs", "1", "--follow", timeout=1500)
    assert run.returncode == 0, run.stdout + run.stderr
    job_id = re.search(r"Created (ftjob-\S+)", run.stdout).group(1)
    steps = re.findall(r"^step (\d+)/(\d+)  ETA \S+  train loss (\d+\.\d+)", run.stdout,
                       re.MULTILINE)
    assert steps, run.stdout
    assert steps[-1][0] == steps[-1][1]  # the last line is the last step
    assert [int(s) for s, _, _ in steps] == sorted({int(s) for s, _, _ in steps})
    job = json.loads(openft(stack, "jobs", "get", job_id, "--json").stdout)
    assert job["status"] == "succeeded"
    assert re.search(r"status\s+succeeded", run.stdout)
    assert re.search(rf"fine-tuned model\s+{re.escape(job['fine_tuned_model'])}", run.stdout)


def test_following_a_failed_job_exits_1_with_its_error(stack: Stack, tmp_path: Path):
    data = tmp_path / "short.jsonl"
    data.write_bytes(flagged_jsonl(5))  # 6 rows: fewer than the 10 a job needs
    file_id = upload(stack, data)
    created = openft(stack, "jobs", "create", "--model", "tiny-llama", "--training-file",
                     file_id, "--json")
    assert created.returncode == 0, created.stderr
    job_id = json.loads(created.stdout)["id"]
    followed = openft(stack, "jobs", "follow", job_id, timeout=300)
    assert followed.returncode == 1, followed.stdout + followed.stderr
    assert f"job {job_id} failed: " in followed.stderr
    assert "(code: invalid_n_examples)" in followed.stderr
    assert "Traceback" not in followed.stderr
    assert re.search(r"status\s+failed", followed.stdout)
