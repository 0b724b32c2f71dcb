"""The deploy CLI's own behaviour that needs no cluster."""

from __future__ import annotations

import json

import pytest

from serving.config import ServingConfig
from serving.deploy import default_serve_url, main

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
