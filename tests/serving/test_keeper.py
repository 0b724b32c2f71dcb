"""The head's serving keeper (serving/keeper.py): what it asks the dashboard, and when it
deploys. The whole loop runs against a real cluster in tests/e2e/test_chart_wiring.py."""

from __future__ import annotations

import doctest
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

import serving.keeper as keeper
from devstack.processes import free_port
from tests.support.http_stub import http_stub


def test_doc_examples() -> None:
    assert doctest.testmod(keeper).failed == 0


@pytest.fixture
def dashboard() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A stand-in for the dashboard's Serve endpoint that records the headers it got."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(dict(self.headers))
            body = json.dumps({"applications": {"openft-serving": {"status": "RUNNING"}}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    with http_stub(Handler) as url:
        yield url, seen


def test_the_dashboard_is_asked_with_the_token(dashboard) -> None:
    url, seen = dashboard
    apps = keeper.serve_applications(url, {"Authorization": "Bearer t0ken"})
    assert apps == {"openft-serving": {"status": "RUNNING"}}
    assert seen[0]["Authorization"] == "Bearer t0ken"


def test_a_dashboard_that_does_not_answer_is_no_answer() -> None:
    assert keeper.serve_applications(f"http://127.0.0.1:{free_port()}", {}, timeout=2) is None


def test_it_deploys_only_when_missing_and_keeps_going_after_a_failure(capsys) -> None:
    answers = iter([False, True, True, False])
    deploys: list[int] = []

    def deploy() -> None:
        deploys.append(1)
        if len(deploys) == 1:
            raise RuntimeError("the head went away mid-deploy")

    keeper.keep_deployed(lambda: next(answers), deploy, every_s=30, rounds=4,
                         sleep=lambda s: None)
    assert len(deploys) == 2  # the two checks that found the app missing
    out = capsys.readouterr().out
    assert out.count("deploying") == 2 and "the head went away mid-deploy" in out
