"""What the reliability tests build their API apps from."""

from __future__ import annotations

from pathlib import Path

from service.main import build_context, create_app
from service.settings import Settings
from tests.service.conftest import KEY_A, KEY_B, ORG_A, ORG_B
from tests.service.fake_ray import FakeRay


def api_app(tmp: Path, database_url: str, s3_server, tiny_model_dir: Path,
            serving_url: str = "http://127.0.0.1:9"):
    """The API on real SeaweedFS, a fake Ray and ``serving_url`` (by default nothing listens
    there), with org-a and org-b, as ``tests/service/conftest.py`` builds it per test."""
    settings = Settings(
        data_dir=tmp / "data", database_url=database_url,
        s3_endpoint_url=s3_server.endpoint_url, s3_bucket=s3_server.bucket,
        s3_access_key=s3_server.access_key, s3_secret_key=s3_server.secret_key,
        ray_address="http://127.0.0.1:9", serving_url=serving_url,
        api_keys=f"{KEY_A}={ORG_A},{KEY_B}={ORG_B}", default_base_model=False,
        base_models={"tiny-llama": tiny_model_dir},
    )
    return create_app(settings, run_scheduler=False,
                      context=lambda s: build_context(s, ray=FakeRay()))
