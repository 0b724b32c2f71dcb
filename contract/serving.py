"""How big the serving app is and where it listens: every serving knob, defined once.

The service's settings read these from ``OPENFT_SERVING_<NAME>`` (``service.settings``), the
launcher hands them to ``python -m serving.deploy`` unchanged, and serving's
``ServingConfig`` adds where the models and adapters are (``serving.config``). A new knob is
a field here; both ends see it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Accelerator = Literal["cpu", "gpu"]
"""What one deployment's engines run on, once ``ServingOptions.accelerator`` is resolved."""

SERVING_TOKEN_ENV = "OPENFT_SERVING_TOKEN"
"""The variable that holds the serving token: the API sends it to serving as
``Authorization: Bearer <token>``; ``serving.deploy`` turns it into the digest the ingress
checks. Only the API process and the deploy step ever hold the token itself; the Ray cluster
(its nodes, its jobs' environments, the Serve config in the dashboard) sees only the digest."""


SERVING_TOKEN_REFUSED = "invalid_serving_token"
"""The ``code`` of serving's 401 to a caller without the token (``serving.deploy`` takes that
answer as proof that the ingress is up)."""


def serving_token_digest(token: str) -> str:
    """What the serving ingress compares a caller's bearer token against: its SHA-256, hex.

    A digest rather than the token, so that the Serve application's config, which Ray shows to
    anyone who can read its dashboard, holds nothing that opens serving. The token is random
    (256 bits from the launcher, or the operator's secret), so a fast hash suffices.

    >>> serving_token_digest("t")[:16]
    'e3b98a4da31a127d'
    """
    return hashlib.sha256(token.encode()).hexdigest()


class ServingOptions(BaseModel):
    """The serving knobs an operator sets; pure values, checked without Ray or vLLM."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    """Address the Ray Serve HTTP proxy binds to."""

    port: int = Field(default=8001, ge=1, le=65535)
    """Port of the Ray Serve HTTP proxy (the OpenAI-compatible ``/v1`` surface). 8001, beside
    the API's 8000 on one host; the Helm chart's Ray head sets 8000."""

    app_name: str = "openft-serving"
    """Name of the Serve application; a redeploy under the same name replaces it in place."""

    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    """What the engines run on. ``auto``: GPUs when the Ray cluster has any when serving is
    deployed, else CPUs. ``gpu`` deploys onto GPUs even while the cluster shows none (an
    autoscaler adds GPU nodes on demand); ``cpu`` keeps serving off the GPUs."""

    replica_cpus: float = Field(default=0.5, gt=0)
    """Logical Ray CPUs one engine process reserves: the replica on CPU, each tensor-parallel
    rank on GPU. Fractional on purpose: training runs ask for whole CPUs and must still fit
    beside serving on a small head."""

    num_replicas: int = Field(default=1, ge=1)
    """Engine replicas per base model, when ``autoscaling`` is unset."""

    autoscaling: dict[str, Any] | None = None
    """Ray Serve's ``autoscaling_config`` for every base model's replicas (``min_replicas``,
    ``max_replicas``, ``target_ongoing_requests``, ``upscale_delay_s``, ...), checked by Ray's
    own ``AutoscalingConfig`` where serving reads it; replaces ``num_replicas``. Each base
    model scales on its own load, and a new replica loads adapters on demand like any other.
    As an environment variable, JSON: ``{"min_replicas": 1, "max_replicas": 4}``."""

    max_model_len: int = Field(default=1024, ge=32)
    """Longest prompt plus completion, in tokens (also the longest training sequence), for
    every base model whose own ``max_model_len`` is unset."""

    kv_cache_gib: float = Field(default=1.0, gt=0)
    """KV cache size per engine on CPU, in GiB (vLLM's ``kv_cache_memory_bytes``). Without it
    vLLM's CPU backend tries to reserve most of the machine's memory. On GPU vLLM sizes the
    cache from each model's ``gpu_memory_utilization`` instead."""

    max_adapters_per_replica: int = Field(default=16, ge=1)
    """Adapters one replica holds ready at once: its LRU (Serve routes requests for a held
    adapter to the replica that has it), vLLM's in-memory adapter cache (``max_cpu_loras``)
    and, unless ``max_loras`` says less, the adapters one engine batch can mix. One number on
    purpose: when vLLM holds fewer than Serve routes to it, it swaps weights on every step
    (about 40% of throughput with 16 adapters on CPU, bench/results/serving.md)."""

    max_loras: int | None = Field(default=None, ge=1)
    """Adapters one engine batch can mix; unset means ``max_adapters_per_replica``. Lower it
    only to save accelerator memory: vLLM reserves a rank-``max_lora_rank`` slot per adapter
    in every LoRA layer."""

    max_ongoing_requests: int | None = Field(default=None, ge=1)
    """Requests one engine replica takes at once; more wait for a free replica (Ray Serve's
    ``max_ongoing_requests``). Unset keeps Ray Serve LLM's default."""

    adapter_recheck_s: float = Field(default=5.0, gt=0)
    """How often a replica re-checks in S3 that an adapter it serves still exists (and has no
    ``deleted.json``): a deleted model stops answering on every replica within this time."""

    max_lora_rank: int = Field(default=16, ge=8)
    """Largest LoRA rank served (vLLM allows 8, 16, 32, 64, ...), so also the largest
    ``lora_r`` a job may ask for; training defaults to 8."""

    block_size: int = Field(default=32, ge=32, multiple_of=32)
    """KV cache block size in tokens on CPU, whose backend needs a multiple of 32. On GPU
    vLLM's attention backend chooses (some need 16, others 64)."""

    dtype: str = "auto"
    """Weight dtype for the engine. ``auto`` is vLLM's choice (bf16 for a bf16 checkpoint; on
    CPU, bf16 for fp32 ones too), except on an x86 CPU without bf16 units (no AVX-512 BF16
    or AMX: AMD before Zen 4, Intel before Cooper Lake), where it runs in float32, several
    times faster there at twice the weights' memory (``vllm_cpu.dtype``). Any other value
    goes to vLLM as it is."""

    lora_dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = None
    """dtype of the adapter weights in vLLM's slots (``auto``: the engine's). Unset: bf16 on
    CPU, whatever the engine's dtype: openft's LoRA kernels (``vllm_cpu.lora_kernels``)
    accumulate in fp32 from either, and a decode step with many adapters is bound by reading
    their weights, which bf16 halves (bench/results/serving.md); ``auto`` on GPU, whose LoRA
    kernels expect the model's dtype."""

    ready_timeout_s: float = Field(default=600.0, gt=0)
    """How long ``serving.deploy`` waits for every base model's engine to run."""

    @model_validator(mode="after")
    def _batch_within_held(self) -> ServingOptions:
        if self.max_loras is not None and self.max_loras > self.max_adapters_per_replica:
            raise ValueError("max_loras may not exceed max_adapters_per_replica")
        return self

    @property
    def batch_loras(self) -> int:
        """vLLM's ``max_loras``: adapters mixed in one engine batch."""
        return self.max_loras or self.max_adapters_per_replica

    def resolve_accelerator(self, cluster_gpus: float) -> Accelerator:
        """``accelerator`` for a Ray cluster that has ``cluster_gpus`` GPUs now.

        >>> ServingOptions().resolve_accelerator(8.0), ServingOptions().resolve_accelerator(0)
        ('gpu', 'cpu')
        >>> ServingOptions(accelerator="cpu").resolve_accelerator(8.0)
        'cpu'
        >>> ServingOptions(accelerator="gpu").resolve_accelerator(0)
        'gpu'
        """
        if self.accelerator == "auto":
            return "gpu" if cluster_gpus > 0 else "cpu"
        return self.accelerator

    def engine_lora_dtype(self, accelerator: Accelerator) -> str:
        """``lora_dtype`` as the engine on ``accelerator`` gets it.

        >>> ServingOptions().engine_lora_dtype("cpu"), ServingOptions().engine_lora_dtype("gpu")
        ('bfloat16', 'auto')
        >>> ServingOptions(lora_dtype="float32").engine_lora_dtype("gpu")
        'float32'
        """
        if self.lora_dtype is not None:
            return self.lora_dtype
        return "bfloat16" if accelerator == "cpu" else "auto"
