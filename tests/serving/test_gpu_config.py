"""Serving rendered for a GPU cluster, on this CPU machine: placement, engine settings per base
model, where each replica finds its base model. No Ray, no GPU."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import contract.serving
import serving.base_model
import serving.config
from serving.app import engine_kwargs, llm_config
from serving.base_model import use_local_folder
from serving.config import ServingConfig

BIG = {"id": "big", "tensor_parallel_size": 4, "gpu_memory_utilization": 0.85,
       "max_model_len": 8192}
SMALL = {"id": "small", "volume_path": "/models/small"}
CONFIG = {"base_models": [BIG, SMALL], "s3_bucket": "b", "replica_cpus": 0.5}


@pytest.mark.parametrize("module", [contract.serving, serving.config, serving.base_model])
def test_docstring_examples_hold(module) -> None:
    assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize(
    ("requested", "cluster_gpus", "expected"),
    [("auto", 8.0, "gpu"), ("auto", 0.0, "cpu"), ("cpu", 8.0, "cpu"),
     # Forced: a cluster whose autoscaler adds GPU nodes shows none until a replica asks.
     ("gpu", 0.0, "gpu")],
)
def test_engines_go_on_gpus_when_the_cluster_has_them(requested: str, cluster_gpus: float,
                                                      expected: str) -> None:
    config = ServingConfig.model_validate({**CONFIG, "accelerator": requested})
    assert config.resolve_accelerator(cluster_gpus) == expected


def test_a_replica_takes_one_gpu_per_tensor_parallel_rank_on_one_node() -> None:
    config = ServingConfig.model_validate(CONFIG)
    big, small = (llm_config(config, base, "gpu") for base in config.base_models)

    assert big.accelerator_config.kind == "gpu"
    assert big.placement_group_config == {
        "bundles": [{"GPU": 1, "CPU": 0.5}] * 4, "strategy": "STRICT_PACK"}
    assert small.placement_group_config["bundles"] == [{"GPU": 1, "CPU": 0.5}]
    # The replica actor joins the first bundle and holds nothing of its own.
    assert big.deployment_config["ray_actor_options"]["num_cpus"] == 0


def test_each_base_model_gets_its_own_engine_settings_on_gpu() -> None:
    config = ServingConfig.model_validate(CONFIG)
    big, small = (engine_kwargs(config, base, "gpu") for base in config.base_models)

    assert (big["tensor_parallel_size"], big["gpu_memory_utilization"],
            big["max_model_len"]) == (4, 0.85, 8192)
    assert (small["tensor_parallel_size"], small["gpu_memory_utilization"],
            small["max_model_len"]) == (1, 0.9, config.max_model_len)
    for kwargs in (big, small):
        # vLLM sizes the KV cache and captures CUDA graphs; its backend picks the block size.
        assert not {"kv_cache_memory_bytes", "enforce_eager", "block_size"} & set(kwargs)
        assert kwargs["dtype"] == "auto"
        assert kwargs["lora_dtype"] == "auto"  # GPU LoRA kernels take the model's dtype
        assert kwargs["enable_lora"] is True


def test_an_explicit_lora_dtype_is_kept_on_gpu() -> None:
    config = ServingConfig.model_validate({**CONFIG, "lora_dtype": "float16"})
    assert engine_kwargs(config, config.base_models[0], "gpu")["lora_dtype"] == "float16"


def test_on_cpu_serving_runs_as_before() -> None:
    """The CPU rendering: one fractional CPU bundle, a fixed KV cache, eager mode, bf16
    adapters; tensor parallelism and GPU memory settings do not apply."""
    config = ServingConfig.model_validate(CONFIG)
    llm = llm_config(config, config.base_models[0], "cpu")

    assert llm.accelerator_config.kind == "cpu"
    assert llm.placement_group_config == {"bundles": [{"CPU": 0.5}]}
    assert llm.engine_kwargs == {
        "enable_lora": True, "max_lora_rank": 16, "max_loras": 16, "max_cpu_loras": 16,
        "max_model_len": 8192, "kv_cache_memory_bytes": 2**30, "block_size": 32,
        "dtype": "auto", "lora_dtype": "bfloat16", "enforce_eager": True,
    }


def test_the_driver_names_a_source_and_reads_no_folder() -> None:
    """The deploying machine need not hold the model: a registered one is named by its bucket
    prefix, a volume by its path, and neither is read while the app is built."""
    config = ServingConfig.model_validate(CONFIG)
    big, small = (llm_config(config, base, "gpu") for base in config.base_models)

    assert big.model_loading_config.model_source == "s3://b/base/big"
    assert small.model_loading_config.model_source == "/models/small"  # absent here
    assert big.model_id == "big"  # what the ingress lists


@pytest.mark.parametrize("base", [BIG, SMALL])
def test_a_replica_points_its_engine_at_the_folder_on_its_node(base: dict,
                                                               tmp_path: Path) -> None:
    """What vLLM loads is the node's folder: the fetched copy of a registered model, or the
    volume path. Ray's engine config was already derived in the driver (it caches it)."""
    config = ServingConfig.model_validate({**CONFIG, "base_models": [base]})
    llm = llm_config(config, config.base_models[0], "gpu")
    llm.get_engine_config()  # as Serve's deployment build does, in the driver
    fetched: list[tuple[str, str]] = []

    def fetch(bucket: str, base_id: str) -> Path:
        fetched.append((bucket, base_id))
        return tmp_path / "cache" / base_id

    folder = use_local_folder(llm, fetch=fetch)

    expected = base.get("volume_path") or str(tmp_path / "cache" / base["id"])
    assert folder == expected
    assert fetched == ([] if "volume_path" in base else [("b", base["id"])])
    assert llm.model_loading_config.model_source == expected
    assert llm.get_engine_config().get_initialization_kwargs()["model"] == expected
    assert llm.get_engine_config().mirror_config is None  # Ray downloads nothing itself


@pytest.mark.parametrize(("accelerator", "expected"), [("gpu", "auto"), ("cpu", "float32")])
def test_the_host_cpus_dtype_rule_applies_to_cpu_engines_only(accelerator: str,
                                                              expected: str) -> None:
    """On a host CPU without bf16 units (``vllm_cpu.dtype`` answers float32 for ``auto``),
    a CPU engine runs fp32; a GPU engine's dtype is not the host CPU's business."""
    from serving.server import use_machine_dtype

    config = ServingConfig.model_validate(CONFIG)
    llm = llm_config(config, config.base_models[0], accelerator)
    use_machine_dtype(llm, machine_dtype=lambda requested: "float32")

    assert llm.engine_kwargs["dtype"] == expected
