"""``OPENFT_*`` environment variables: the flat ones and the ``OPENFT_SERVING_*`` group."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from botocore.exceptions import NoCredentialsError
from pydantic import ValidationError

from contract.base_models import BaseModelConfig
from contract.serving import ServingOptions
from service.jobs.scheduler.launch import training_env
from service.settings import EMBEDDED_S3_CREDENTIALS, Settings
from service.storage import BlobStore


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path):
    for name in [n for n in os.environ if n.startswith("OPENFT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OPENFT_DATA_DIR", str(tmp_path))
    return monkeypatch


def test_serving_variables_keep_their_names(env) -> None:
    env.setenv("OPENFT_SERVING_URL", "http://serving:8000")
    env.setenv("OPENFT_SERVING_PORT", "9001")
    env.setenv("OPENFT_SERVING_MAX_MODEL_LEN", "2048")
    env.setenv("OPENFT_SERVING_NUM_REPLICAS", "2")
    env.setenv("OPENFT_SERVING_AUTOSCALING", '{"min_replicas": 1, "max_replicas": 4}')
    env.setenv("OPENFT_SERVING_TOOL_CALL_PARSERS", '{"Qwen2.5-7B-Instruct": "hermes"}')
    env.setenv("OPENFT_SERVING_MAX_ADAPTERS_PER_REPLICA", "24")
    env.setenv("OPENFT_SERVING_MAX_LORA_RANK", "32")
    env.setenv("OPENFT_SERVING_KV_CACHE_GIB", "2")

    settings = Settings()

    assert settings.serving_url == settings.resolved_serving_url == "http://serving:8000"
    assert settings.serving.port == 9001
    assert settings.serving.max_model_len == 2048
    assert settings.serving.num_replicas == 2
    assert settings.serving.autoscaling == {"min_replicas": 1, "max_replicas": 4}
    assert settings.serving.tool_call_parsers == {"Qwen2.5-7B-Instruct": "hermes"}
    assert settings.serving.max_adapters_per_replica == 24
    assert settings.serving.max_lora_rank == 32
    assert settings.serving.kv_cache_gib == 2


def test_flat_variables_still_parse_beside_the_serving_group(env, tmp_path) -> None:
    env.setenv("OPENFT_S3_ENDPOINT_URL", "http://s3:8333")
    env.setenv("OPENFT_S3_ACCESS_KEY", "ak")
    env.setenv("OPENFT_S3_SECRET_KEY", "shh")
    env.setenv("OPENFT_WEBHOOK_SECRET", "whsec_c2VjcmV0")
    env.setenv("OPENFT_WEBHOOKS", '{"org": ["https://hooks.example/a"]}')
    env.setenv("OPENFT_BASE_MODELS", f'{{"m": "{tmp_path / "m"}"}}')
    env.setenv("OPENFT_DEFAULT_BASE_MODEL", "false")
    env.setenv("OPENFT_RAY_NUM_CPUS", "3")
    env.setenv("OPENFT_TRAINING_MAX_WORKERS", "4")
    env.setenv("OPENFT_SERVING_SERVICE_HOST", "10.0.0.1")  # unknown names stay ignored

    settings = Settings()

    assert settings.data_dir == tmp_path
    assert settings.resolved_s3_endpoint_url == "http://s3:8333"
    assert settings.s3_secret_key.get_secret_value() == "shh"
    assert settings.webhook_secret.get_secret_value() == "whsec_c2VjcmV0"
    assert settings.webhooks == {"org": ["https://hooks.example/a"]}
    assert settings.base_model_configs() == {"m": BaseModelConfig(volume_path=str(tmp_path / "m"))}
    assert (settings.ray_num_cpus, settings.training_max_workers) == (3, 4)


def test_serving_defaults_are_the_contracts(env) -> None:
    settings = Settings()

    assert settings.serving.options() == ServingOptions()
    assert settings.resolved_serving_url == f"http://127.0.0.1:{ServingOptions().port}"
    assert settings.serving.port != settings.port  # both on one host under make run


def test_base_models_take_engine_settings_and_the_default_is_a_bucket_model(env) -> None:
    env.setenv("OPENFT_BASE_MODELS", '{"llama-70b": {"tensor_parallel_size": 8, '
               '"gpu_memory_utilization": 0.85, "max_model_len": 8192}, "q": "~/q"}')
    env.setenv("OPENFT_SERVING_TOOL_CALL_PARSERS", '{"q": "hermes"}')

    models = Settings().base_model_configs()

    assert list(models) == ["SmolLM2-135M-Instruct", "llama-70b", "q"]
    assert models["SmolLM2-135M-Instruct"] == BaseModelConfig()  # fetched from the bucket
    big = models["llama-70b"]
    assert (big.volume_path, big.tensor_parallel_size, big.max_model_len) == (None, 8, 8192)
    assert models["q"].volume_path == str(Path("~/q").expanduser())
    assert models["q"].tool_call_parser == "hermes"


def test_an_unknown_base_model_setting_is_refused(env) -> None:
    env.setenv("OPENFT_BASE_MODELS", '{"m": {"tensor_paralel_size": 2}}')
    with pytest.raises(ValidationError, match="tensor_paralel_size"):
        Settings()


def test_production_settings_read_their_environment_names(env) -> None:
    env.setenv("OPENFT_MIGRATE_ON_START", "false")
    env.setenv("OPENFT_RAY_AUTH_TOKEN", "ray-token")
    env.setenv("OPENFT_TRAINING_S3_CREDENTIALS", "node")

    settings = Settings()

    assert settings.migrate_on_start is False
    assert settings.ray_auth_token.get_secret_value() == "ray-token"
    assert "ray-token" not in repr(settings)
    assert settings.training_s3_credentials == "node"


def test_the_defaults_migrate_at_start_and_send_no_ray_token(env) -> None:
    settings = Settings()

    assert settings.migrate_on_start is True
    assert settings.ray_auth_token is None
    # No secret in a Ray job's environment unless asked for (issue 16).
    assert settings.training_s3_credentials == "node"
    assert "AWS_SECRET_ACCESS_KEY" not in training_env(settings)


def test_s3_keys_unset_mean_the_default_chain_except_for_the_embedded_server(env) -> None:
    assert Settings().s3_credentials() == EMBEDDED_S3_CREDENTIALS  # make run's SeaweedFS
    env.setenv("OPENFT_S3_ENDPOINT_URL", "https://s3.example")
    assert Settings().s3_credentials() is None  # an IAM role, workload identity
    env.setenv("OPENFT_S3_ACCESS_KEY", "ak")
    env.setenv("OPENFT_S3_SECRET_KEY", "sk")
    assert Settings().s3_credentials() == ("ak", "sk")


def test_half_a_key_pair_is_refused(env) -> None:
    env.setenv("OPENFT_S3_ACCESS_KEY", "ak")
    with pytest.raises(ValidationError, match="OPENFT_S3_SECRET_KEY"):
        Settings()


def test_a_bucket_without_keys_uses_boto3s_default_chain(env, s3_server, tmp_path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE"):
        env.delenv(name, raising=False)
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    env.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    env.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = Settings(s3_endpoint_url=s3_server.endpoint_url, s3_bucket=s3_server.bucket)

    with pytest.raises(NoCredentialsError):  # the chain was asked, and it has nothing
        BlobStore.from_settings(settings).put("ambient/probe", b"hello")

    # What an IAM role or workload identity supplies, the chain finds.
    env.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    env.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    blobs = BlobStore.from_settings(settings)
    blobs.put("ambient/probe", b"hello")
    assert blobs.get("ambient/probe") == b"hello"
    blobs.ping()


SECRETS = dict(OPENFT_S3_ACCESS_KEY="access-key-value", OPENFT_S3_SECRET_KEY="secret-key-value",
               OPENFT_RAY_AUTH_TOKEN="ray-token-value",
               OPENFT_DATABASE_URL="postgresql://openft:db-password-value@db:5432/openft",
               OPENFT_API_KEYS="sk-api-key-value=org", OPENFT_WEBHOOK_SECRET="whsec_d2hzZWM=",
               OPENFT_S3_ENDPOINT_URL="https://s3.example", OPENFT_S3_REGION="eu-west-1",
               OPENFT_RAY_ADDRESS="http://openft-ray-head-svc:8265")


def _env_with_secrets(env, mode: str) -> dict[str, str]:
    for name, value in SECRETS.items():
        env.setenv(name, value)
    env.setenv("OPENFT_TRAINING_S3_CREDENTIALS", mode)
    return training_env(Settings())


def test_a_training_run_carries_the_bucket_keys_in_runtime_env_mode(env) -> None:
    run_env = _env_with_secrets(env, "runtime_env")

    assert run_env["AWS_ACCESS_KEY_ID"] == "access-key-value"
    assert run_env["AWS_SECRET_ACCESS_KEY"] == "secret-key-value"
    assert run_env["AWS_ENDPOINT_URL"] == run_env["AWS_ENDPOINT_URL_S3"] == "https://s3.example"
    assert run_env["AWS_REGION"] == run_env["AWS_DEFAULT_REGION"] == "eu-west-1"
    carried = " ".join(f"{k}={v}" for k, v in run_env.items())
    for never in ("ray-token-value", "db-password-value", "sk-api-key-value", "whsec_"):
        assert never not in carried


def test_a_training_run_carries_no_secret_in_node_mode(env) -> None:
    run_env = _env_with_secrets(env, "node")

    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(run_env)
    assert run_env["AWS_ENDPOINT_URL"] == run_env["AWS_ENDPOINT_URL_S3"] == "https://s3.example"
    assert run_env["AWS_REGION"] == run_env["AWS_DEFAULT_REGION"] == "eu-west-1"
    carried = " ".join(f"{k}={v}" for k, v in run_env.items())
    for secret in ("access-key-value", "secret-key-value", "ray-token-value",
                   "db-password-value", "sk-api-key-value", "whsec_"):
        assert secret not in carried
