"""What the launcher hands the stack it starts; no services needed."""

from __future__ import annotations

from devstack.launcher import serving_config, stack_env
from service.settings import Settings
from serving.config import ServingConfig


def test_every_serving_option_reaches_serving_unchanged(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("OPENFT_SERVING_MAX_LORAS", "4")
    monkeypatch.setenv("OPENFT_SERVING_DTYPE", "float32")
    monkeypatch.setenv("OPENFT_SERVING_TOOL_CALL_PARSERS", '{"a": "hermes"}')
    settings = Settings(data_dir=tmp_path, default_base_model=False,
                        base_models={"a": tmp_path / "a", "b": tmp_path / "b"})

    config = ServingConfig.model_validate(serving_config(settings))

    assert config.max_loras == 4 and config.dtype == "float32"
    assert [m.tool_call_parser for m in config.base_models] == ["hermes", None]
    assert config.port == settings.serving.port
    assert config.s3_bucket == settings.s3_bucket


def test_vllm_gets_whole_gib_in_its_environment(tmp_path) -> None:
    """vLLM parses ``VLLM_CPU_KVCACHE_SPACE`` with ``int()``: "1.0" would stop the engine."""
    settings = Settings(data_dir=tmp_path, serving={"kv_cache_gib": 1.0})

    assert stack_env(settings)["VLLM_CPU_KVCACHE_SPACE"] == "1"
