"""What the launcher hands the stack it starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from contract.base_models import MODEL_CACHE_ENV
from contract.serving import serving_token_digest
from devstack.launcher import (
    ensure_serving_token,
    prepare_base_models,
    register_base_models,
    serving_config,
    stack_env,
    with_free_ports,
)
from service.settings import DEFAULT_BASE_MODEL_ID, Settings
from serving.config import ServingConfig


def test_every_serving_option_reaches_serving_unchanged(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("OPENFT_SERVING_MAX_LORAS", "4")
    monkeypatch.setenv("OPENFT_SERVING_DTYPE", "float32")
    monkeypatch.setenv("OPENFT_SERVING_TOOL_CALL_PARSERS", '{"a": "hermes"}')
    settings = Settings(data_dir=tmp_path, default_base_model=False,
                        base_models={"a": tmp_path / "a", "b": {"tensor_parallel_size": 4,
                                                                "max_model_len": 4096}})

    config = ServingConfig.model_validate(serving_config(settings))

    assert config.max_loras == 4 and config.dtype == "float32"
    assert [m.tool_call_parser for m in config.base_models] == ["hermes", None]
    assert [m.volume_path for m in config.base_models] == [str(tmp_path / "a"), None]
    assert (config.base_models[1].tensor_parallel_size,
            config.base_models[1].max_model_len) == (4, 4096)
    assert config.port == settings.serving.port
    assert config.s3_bucket == settings.s3_bucket


def test_each_start_draws_a_serving_token_only_the_api_and_a_digest_carry(tmp_path) -> None:
    """Serving answers only the token the API holds: ``make run`` draws one per start, hands
    serving its digest, and keeps the token itself out of the Ray head's environment."""
    first = ensure_serving_token(Settings(data_dir=tmp_path))
    second = ensure_serving_token(Settings(data_dir=tmp_path))
    token = first.serving_token.get_secret_value()
    assert len(token) >= 40 and token != second.serving_token.get_secret_value()
    assert first.serving_headers() == {"Authorization": f"Bearer {token}"}
    config = ServingConfig.model_validate(serving_config(first))
    assert config.api_token_sha256 == serving_token_digest(token)
    assert token not in json.dumps(serving_config(first))
    assert token not in json.dumps(stack_env(first))
    # The operator's own token is kept; serving deployed elsewhere is its operator's business.
    assert ensure_serving_token(first).serving_token == first.serving_token
    assert ensure_serving_token(
        Settings(data_dir=tmp_path, serving_url="http://s:8000")).serving_token is None


def test_the_default_model_is_served_from_the_bucket(tmp_path) -> None:
    config = ServingConfig.model_validate(serving_config(Settings(data_dir=tmp_path)))

    assert [(m.id, m.volume_path) for m in config.base_models] == [(DEFAULT_BASE_MODEL_ID, None)]


def test_the_ray_head_has_its_own_model_cache(tmp_path) -> None:
    """The node's cache is the node's: in its environment, under the data dir."""
    env = stack_env(Settings(data_dir=tmp_path))

    assert Path(env[MODEL_CACHE_ENV]).parent == tmp_path


def test_vllm_gets_whole_gib_in_its_environment(tmp_path) -> None:
    """vLLM parses ``VLLM_CPU_KVCACHE_SPACE`` with ``int()``: "1.0" would stop the engine."""
    settings = Settings(data_dir=tmp_path, serving={"kv_cache_gib": 1.0})

    assert stack_env(settings)["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_only_volume_models_must_be_on_the_launchers_disk(tmp_path) -> None:
    bucket_only = Settings(data_dir=tmp_path, default_base_model=False,
                           base_models={"remote": {"tensor_parallel_size": 2}})
    prepare_base_models(bucket_only)  # nothing on disk, nothing asked

    missing = Settings(data_dir=tmp_path, default_base_model=False,
                       base_models={"local": tmp_path / "nowhere"})
    with pytest.raises(SystemExit, match="local: no config.json"):
        prepare_base_models(missing)


def _on(s3_server, tmp_path: Path, **kw) -> Settings:
    """On the session's S3 server, in a bucket of its own: the stand-in SmolLM2 registered
    here must not replace the real one other tests register."""
    return Settings(data_dir=tmp_path, s3_endpoint_url=s3_server.endpoint_url,
                    s3_bucket="launcher-test", s3_access_key=s3_server.access_key,
                    s3_secret_key=s3_server.secret_key, **kw)


def test_the_default_model_is_registered_once_and_strangers_are_refused(
        s3_server, tmp_path, capsys) -> None:
    """``make run`` registers its converted SmolLM2 (here a stand-in folder) before serving
    deploys, and will not start with a bucket model nobody registered."""
    settings = _on(s3_server, tmp_path / "run")
    folder = settings.base_model_cache_dir / DEFAULT_BASE_MODEL_ID
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "tokenizer.json").write_text("{}")

    register_base_models(settings)
    register_base_models(settings)
    assert capsys.readouterr().out.count("registered") == 1

    stranger = settings.model_copy(update={"base_models": _on(
        s3_server, tmp_path, base_models={"never-registered": {}}).base_models})
    with pytest.raises(SystemExit, match="never-registered is not registered"):
        register_base_models(stranger)


def test_ray_ports_nobody_pinned_are_picked_free_and_pinned_ones_kept(tmp_path) -> None:
    chosen = with_free_ports(Settings(data_dir=tmp_path))
    assert chosen.ray_gcs_port and chosen.ray_dashboard_port
    assert chosen.ray_gcs_port != chosen.ray_dashboard_port
    assert chosen.resolved_ray_address == f"http://127.0.0.1:{chosen.ray_dashboard_port}"

    pinned = with_free_ports(Settings(data_dir=tmp_path, ray_gcs_port=6390))
    assert pinned.ray_gcs_port == 6390 and pinned.ray_dashboard_port not in {6390, None}


def test_a_taken_port_stops_the_launcher_at_once_naming_port_and_holder(tmp_path) -> None:
    """Before anything starts: not minutes later, and never by talking to the holder."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = dict(os.environ, OPENFT_DATA_DIR=str(tmp_path), OPENFT_S3_PORT=str(port),
                   OPENFT_DEFAULT_BASE_MODEL="false")
        done = subprocess.run([sys.executable, "-m", "devstack.launcher"], env=env,
                              capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).parents[2])

    assert done.returncode == 1
    assert f"port {port} (SeaweedFS S3) is taken by pid {os.getpid()}" in done.stderr
    assert "OPENFT_S3_PORT" in done.stderr
    assert not (tmp_path / "logs").exists()  # nothing was started
