"""The deploy CLI: argument handling and the ``--submit`` entrypoint without a cluster, and one
round trip through a real Ray head's Jobs API with token auth on, as the chart's hook runs it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from contract.serving import serving_token_digest
from devstack.processes import free_port, free_ports, start_ray_head
from serving.config import ServingConfig
from serving.deploy import (
    auth_headers,
    default_serve_url,
    deploy_entrypoint,
    main,
    submission_id,
    submit_once,
)
from tests.support.http_stub import http_stub

MINIMAL = {"base_models": [{"id": "tiny"}], "s3_bucket": "b"}


def test_invalid_config_exits_1_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", json.dumps({**MINIMAL, "replica_cpus": 0})]) == 1
    assert "replica_cpus" in capsys.readouterr().err


def test_missing_config_file_exits_1(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main(["--config", str(tmp_path / "absent.json")]) == 1
    assert "absent.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:8000"), ("0.0.0.0", "http://127.0.0.1:8000")],
)
def test_readiness_is_checked_where_the_proxy_listens(host: str, url: str) -> None:
    config = ServingConfig.model_validate({**MINIMAL, "host": host, "port": 8000})
    assert default_serve_url(config) == url


# --- --submit without a cluster --------------------------------------------------------------


@pytest.mark.parametrize("bucket", ["plain", "it's; rm -rf / $(id) `id` \"q\" \\ ünï"])
def test_the_entrypoint_gives_the_head_the_config_back_intact(bucket: str) -> None:
    config_json = json.dumps({**MINIMAL, "s3_bucket": bucket})
    argv = shlex.split(deploy_entrypoint(config_json, "/opt/venv/bin/python",
                                         "http://127.0.0.1:8000"))
    assert argv == ["/opt/venv/bin/python", "-m", "serving.deploy", "--config", config_json,
                    "--serve-url", "http://127.0.0.1:8000"]
    assert json.loads(argv[4])["s3_bucket"] == bucket


def test_the_image_interpreter_runs_the_job_unless_told_otherwise() -> None:
    assert shlex.split(deploy_entrypoint("{}"))[:3] == ["python", "-m", "serving.deploy"]


def test_submission_ids_name_the_config_and_the_time() -> None:
    t1, t2 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)
    a, b = json.dumps(MINIMAL), json.dumps({**MINIMAL, "s3_bucket": "c"})
    assert submission_id(a, t1).startswith("openft-serving-deploy-")
    assert submission_id(a, t1).endswith("-20260102T030405Z")
    assert submission_id(a, t1) == submission_id(a, t1)
    assert submission_id(a, t1) != submission_id(a, t2)  # Ray refuses a reused id
    assert submission_id(a, t1) != submission_id(b, t1)


@pytest.mark.parametrize(
    ("env", "headers"),
    [({}, {}),
     ({"RAY_AUTH_TOKEN": "ray"}, {"Authorization": "Bearer ray"}),
     ({"OPENFT_RAY_AUTH_TOKEN": "oft", "RAY_AUTH_TOKEN": "ray"}, {"Authorization": "Bearer oft"}),
     ({"OPENFT_RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN": ""}, {})],
)
def test_the_ray_token_comes_from_the_environment(env: dict[str, str],
                                                  headers: dict[str, str]) -> None:
    assert auth_headers(env) == headers


@pytest.mark.parametrize("extra", [["--timeout", "5"], ["--entrypoint-python", "/x/python"]])
def test_submit_options_need_submit(extra: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--config", json.dumps(MINIMAL), *extra])
    assert raised.value.code == 2


class _Head:
    """Ray's ``JobSubmissionClient`` as a head whose dashboard answers a submission with an
    error, once, after its job agent took the job (seen in CI: a 500, then "already exists")."""

    def __init__(self, agent_took_it: bool) -> None:
        self.jobs: dict[str, str] = {}
        self.agent_took_it = agent_took_it
        self.tries = 0

    def submit_job(self, *, entrypoint: str, submission_id: str) -> str:
        self.tries += 1
        if submission_id in self.jobs:
            raise RuntimeError(f"Job with submission_id {submission_id} already exists.")
        if self.tries == 1:
            if self.agent_took_it:
                self.jobs[submission_id] = entrypoint
            raise RuntimeError("Request failed with status code 500: agent timed out")
        self.jobs[submission_id] = entrypoint
        return submission_id

    def get_job_info(self, submission_id: str) -> str:
        if submission_id not in self.jobs:
            raise RuntimeError("Request failed with status code 404: Job does not exist")
        return self.jobs[submission_id]


def test_a_submission_answered_with_an_error_after_the_head_took_it_is_the_deploy() -> None:
    head = _Head(agent_took_it=True)
    submit_once(head, "python -m serving.deploy", "deploy-1")  # the 500 is not a failure
    submit_once(head, "python -m serving.deploy", "deploy-1")  # nor is a retry's refusal
    assert head.jobs == {"deploy-1": "python -m serving.deploy"}


def test_a_submission_the_head_refused_is_raised_for_a_retry() -> None:
    head = _Head(agent_took_it=False)
    with pytest.raises(RuntimeError, match="500"):
        submit_once(head, "python -m serving.deploy", "deploy-1")
    assert head.jobs == {}
    submit_once(head, "python -m serving.deploy", "deploy-1")
    assert head.jobs == {"deploy-1": "python -m serving.deploy"}


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append(self.path)
        self.send_response(503)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dashboard_stand_in() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback that records every request and answers 503."""
    seen: list[str] = []
    with http_stub(type("Handler", (_Recorder,), {"seen": seen})) as url:
        yield url, seen


def test_an_invalid_config_is_refused_before_anything_is_submitted(
        dashboard_stand_in: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    url, seen = dashboard_stand_in
    assert main(["--submit", url, "--config", json.dumps({**MINIMAL, "replica_cpus": 0})]) == 1
    assert "replica_cpus" in capsys.readouterr().err
    assert seen == []


def test_no_serving_token_is_refused_before_anything_is_submitted(
        dashboard_stand_in: tuple[str, list[str]], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Serving deployed without a token would answer anyone who reaches it."""
    monkeypatch.delenv("OPENFT_SERVING_TOKEN", raising=False)
    url, seen = dashboard_stand_in
    assert main(["--submit", url, "--config", json.dumps(MINIMAL)]) == 1
    assert "OPENFT_SERVING_TOKEN" in capsys.readouterr().err
    assert seen == []


def test_a_head_that_never_comes_up_fails_after_the_timeout(
        dashboard_stand_in: tuple[str, list[str]], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENFT_SERVING_TOKEN", SERVING_TOKEN)
    url, seen = dashboard_stand_in
    assert main(["--submit", url, "--config", json.dumps(MINIMAL), "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert "gave up waiting for the Ray Jobs API" in err, err
    assert seen and all(path == "/api/version" for path in seen)  # asked, never submitted


# --- a real head ------------------------------------------------------------------------------

TOKEN = "openft-test-token-0123456789abcdef"
SERVING_TOKEN = "openft-serving-token-0123456789abcdef"


@pytest.fixture(scope="module")
def token_head() -> Iterator[str]:
    """A Ray head with token auth on and no CPUs for work (as the chart runs it); its
    dashboard URL."""
    root = Path("/tmp") / f"ray-submit-{os.getpid()}"  # Ray's socket paths must stay short
    gcs_port, dashboard_port = free_ports(2)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    proc = start_ray_head(root, gcs_port, dashboard_port, num_cpus=0, log_dir=root, env=env,
                          num_gpus=0)
    try:
        yield f"http://127.0.0.1:{dashboard_port}"
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)


def run_submit(url: str, config: dict, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m serving.deploy --submit`` as the hook pod runs it: its own process, which is
    no Ray node, with only the tokens in its environment."""
    return subprocess.run(
        [sys.executable, "-m", "serving.deploy", "--submit", url, "--config", json.dumps(config),
         "--timeout", "120", "--entrypoint-python", sys.executable],
        capture_output=True, text=True, timeout=180,
        env={k: v for k, v in env.items() if not k.startswith("RAY_")})


@pytest.mark.slow
def test_submit_runs_the_deploy_on_the_head_and_reports_its_outcome(token_head: str) -> None:
    from ray.job_submission import JobSubmissionClient

    # The head has no CPU for a replica: the deploy runs on the head, reaches Serve, and fails
    # its 3 s readiness wait, which is enough to show the round trip.
    config = {**MINIMAL, "host": "127.0.0.1", "port": free_port(), "ready_timeout_s": 3}
    hook_env = dict(os.environ, OPENFT_SERVING_TOKEN=SERVING_TOKEN)
    refused = run_submit(token_head, config, hook_env)
    assert refused.returncode == 1
    assert "Authentication" in refused.stderr, refused.stderr

    done = run_submit(token_head, config, dict(hook_env, OPENFT_RAY_AUTH_TOKEN=TOKEN))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "submitted Ray job openft-serving-deploy-" in done.stdout
    # The job's own logs, printed by the submitter, and its outcome on stderr.
    assert "not ready after 3s" in done.stdout, done.stdout
    assert " FAILED: " in done.stderr, done.stderr

    jobs = JobSubmissionClient(token_head, headers={"Authorization": f"Bearer {TOKEN}"})
    [job] = jobs.list_jobs()
    assert job.submission_id and job.submission_id.startswith("openft-serving-deploy-")
    assert str(job.status) == "FAILED"
    argv = shlex.split(job.entrypoint)
    assert argv[1:4] == ["-m", "serving.deploy", "--config"]
    # The head (and whoever reads its job list) gets the serving token's digest, not the token.
    assert json.loads(argv[4]) == {**config,
                                   "api_token_sha256": serving_token_digest(SERVING_TOKEN)}
    assert SERVING_TOKEN not in job.entrypoint + json.dumps(job.runtime_env or {})
