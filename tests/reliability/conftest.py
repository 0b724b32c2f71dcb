"""What the reliability tests build their API apps from."""

from __future__ import annotations

from pathlib import Path

from service.main import build_context, create_app
from tests.service.conftest import api_settings
from tests.service.fake_ray import FakeRay


def api_app(tmp: Path, database_url: str, s3_server, tiny_model_dir: Path,
            serving_url: str = "http://127.0.0.1:9"):
    """The API on real SeaweedFS, a fake Ray and ``serving_url`` (by default nothing listens
    there), with org-a and org-b, as ``tests/service/conftest.py`` builds it per test."""
    settings = api_settings(tmp, tiny_model_dir, database_url, s3_server,
                            serving_url=serving_url)
    return create_app(settings, run_scheduler=False,
                      context=lambda s: build_context(s, ray=FakeRay()))
