"""ServingConfig and what build_app derives from it; no services needed."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from contract.serving import serving_token_digest
from serving.app import build_app, engine_kwargs, llm_config
from serving.config import ServingConfig
from serving.deploy import load_config

MINIMAL = {"base_models": [{"id": "tiny"}], "s3_bucket": "b"}


def test_defaults_fit_beside_training() -> None:
    config = ServingConfig.model_validate(MINIMAL)

    assert 0 < config.replica_cpus < 1
    assert config.num_replicas == 1
    assert config.max_lora_rank >= 8
    assert config.adapters_uri == "s3://b/models"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"aws_secret_access_key": "s"}, "aws_secret_access_key"),  # secrets come from the env
        ({"base_models": [{"id": "a:b"}]}, "id"),  # ':' starts an adapter name
        ({"base_models": [{"id": "a"}, {"id": "a", "volume_path": "/n"}]}, "unique"),
        # A base model is a volume or registered in the bucket, never the deployer's folder.
        ({"base_models": [{"id": "a", "path": "/m"}]}, "path"),
        ({"base_models": [{"id": "a", "tensor_parallel_size": 0}]}, "tensor_parallel_size"),
        ({"base_models": [{"id": "a", "gpu_memory_utilization": 1.5}]}, "gpu_memory_utilization"),
        ({"accelerator": "tpu"}, "accelerator"),
        ({"block_size": 16}, "block_size"),  # vLLM's CPU backend wants multiples of 32
        ({"max_adapters_per_replica": 4, "max_loras": 8}, "max_loras"),
        ({"max_cpu_loras": 8}, "max_cpu_loras"),  # one number: max_adapters_per_replica
        ({"autoscaling": {"min_replicas": 1, "max_replica": 2}}, "max_replica"),  # typo
        ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "max_replicas"),
        ({"adapters_prefix": "/"}, "adapters_prefix"),
        ({"api_token_sha256": "the-token"}, "api_token_sha256"),  # a digest, never the token
    ],
)
def test_rejects(change: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ServingConfig.model_validate({**MINIMAL, **change})


def test_adapters_prefix_is_normalised() -> None:
    config = ServingConfig.model_validate({**MINIMAL, "adapters_prefix": "/ft/models/"})
    assert config.adapters_uri == "s3://b/ft/models"


TOKEN_ENV = {"OPENFT_SERVING_TOKEN": "the-token"}


def test_load_config_takes_inline_json_or_a_path(tmp_path) -> None:
    path = tmp_path / "serving.json"
    path.write_text(json.dumps(MINIMAL))

    assert load_config(json.dumps(MINIMAL), TOKEN_ENV) == load_config(str(path), TOKEN_ENV)


def test_serving_is_deployed_for_the_tokens_digest_and_never_without_one() -> None:
    """The Helm chart's deploy steps hold the token in their environment: the config that
    reaches the cluster (as the submitted job's command line, or Serve's) carries only its
    digest; with neither, deploying is refused rather than serving everyone."""
    config = load_config(json.dumps(MINIMAL), TOKEN_ENV)
    assert config.api_token_sha256 == serving_token_digest("the-token")
    shipped = config.model_dump_json(exclude_unset=True)  # what --submit sends to the head
    assert config.api_token_sha256 in shipped and "the-token" not in shipped
    digest = "ab" * 32  # one in the config wins over the environment
    assert load_config(json.dumps({**MINIMAL, "api_token_sha256": digest}),
                       TOKEN_ENV).api_token_sha256 == digest
    with pytest.raises(ValueError, match="OPENFT_SERVING_TOKEN"):
        load_config(json.dumps(MINIMAL), {})
    with pytest.raises(ValueError, match="no serving token"):
        build_app(ServingConfig.model_validate(MINIMAL), "cpu")


def test_engine_settings_follow_the_config() -> None:
    config = ServingConfig.model_validate({**MINIMAL, "kv_cache_gib": 0.5, "max_lora_rank": 32})
    kwargs = engine_kwargs(config, config.base_models[0], "cpu")

    assert kwargs["enable_lora"] is True
    assert kwargs["max_lora_rank"] == 32
    assert kwargs["kv_cache_memory_bytes"] == 2**29
    assert kwargs["block_size"] % 32 == 0
    assert kwargs["lora_dtype"] == "bfloat16"  # half the bytes for the CPU LoRA kernels to read


def test_llm_config_reserves_only_replica_cpus_and_loads_adapters_from_s3() -> None:
    config = ServingConfig.model_validate({**MINIMAL, "replica_cpus": 0.25})
    llm = llm_config(config, config.base_models[0], "cpu")

    assert llm.model_id == "tiny"
    assert llm.lora_config.dynamic_lora_loading_path == "s3://b/models"
    assert llm.placement_group_config == {"bundles": [{"CPU": 0.25}]}
    assert llm.deployment_config["ray_actor_options"]["num_cpus"] == 0


def test_one_number_sizes_the_replica_lru_and_vllms_adapter_slots() -> None:
    """Serve's LRU, vLLM's adapter cache and batch slots agree unless max_loras says less."""
    config = ServingConfig.model_validate({**MINIMAL, "max_adapters_per_replica": 12})
    llm = llm_config(config, config.base_models[0], "cpu")

    assert llm.lora_config.max_num_adapters_per_replica == 12
    assert llm.engine_kwargs["max_cpu_loras"] == 12
    assert llm.engine_kwargs["max_loras"] == 12

    fewer_slots = ServingConfig.model_validate({**MINIMAL, "max_adapters_per_replica": 12,
                                                "max_loras": 4})
    kwargs = engine_kwargs(fewer_slots, fewer_slots.base_models[0], "cpu")
    assert kwargs["max_loras"] == 4
    assert kwargs["max_cpu_loras"] == 12


def test_replicas_are_fixed_or_autoscaled_from_the_config() -> None:
    fixed = ServingConfig.model_validate({**MINIMAL, "num_replicas": 3})
    assert llm_config(fixed, fixed.base_models[0], "cpu").deployment_config["num_replicas"] == 3

    autoscaling = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2}
    scaled = ServingConfig.model_validate({**MINIMAL, "autoscaling": autoscaling})
    deployment = llm_config(scaled, scaled.base_models[0], "cpu").deployment_config
    assert deployment["autoscaling_config"] == autoscaling
    assert "num_replicas" not in deployment


def test_operator_settings_reach_the_serving_config(monkeypatch, tmp_path) -> None:
    """``OPENFT_SERVING_*`` variables become a ServingConfig that ``serving.deploy`` accepts."""
    from devstack.launcher import serving_config
    from service.settings import Settings

    monkeypatch.setenv("OPENFT_SERVING_AUTOSCALING", '{"min_replicas": 1, "max_replicas": 3}')
    monkeypatch.setenv("OPENFT_SERVING_MAX_ADAPTERS_PER_REPLICA", "24")
    monkeypatch.setenv("OPENFT_SERVING_ACCELERATOR", "cpu")
    settings = Settings(data_dir=tmp_path, default_base_model=False,
                        base_models={"a": str(tmp_path / "a"),
                                     "b": {"tensor_parallel_size": 2, "max_model_len": 4096}})
    config = ServingConfig.model_validate(serving_config(settings))

    assert [m.id for m in config.base_models] == ["a", "b"]
    assert config.base_models[0].volume_path == str(tmp_path / "a")
    assert config.base_models[1].volume_path is None  # registered in the bucket
    assert config.base_models[1].tensor_parallel_size == 2
    assert config.base_models[1].max_model_len == 4096
    assert config.accelerator == "cpu"
    assert config.autoscaling == {"min_replicas": 1, "max_replicas": 3}
    assert config.max_adapters_per_replica == 24


@pytest.mark.parametrize(("name", "dtype"), [("float32", "torch.float32"),
                                           ("bfloat16", "torch.bfloat16"), ("auto", "auto")])
def test_vllm_accepts_the_lora_dtype_serving_asks_for(name: str, dtype: str) -> None:
    """vLLM's LoRAConfig refuses the name "float32" (it takes fp32 only as a torch dtype)."""
    from vllm.config.lora import LoRAConfig

    from serving.server import use_torch_lora_dtype

    config = ServingConfig.model_validate({**MINIMAL, "lora_dtype": name})
    llm = llm_config(config, config.base_models[0], "cpu")
    llm.get_engine_config()  # Ray caches it on the LLMConfig as the deployment is built
    use_torch_lora_dtype(llm)

    for kwargs in (llm.engine_kwargs, llm.get_engine_config().engine_kwargs):
        lora = LoRAConfig(max_lora_rank=16, lora_dtype=kwargs["lora_dtype"])
        assert str(lora.lora_dtype) == dtype
