"""Adapter metrics of one model replica, exported through Ray.

A replica records with ``ray.serve.metrics`` (Ray Serve adds the ``deployment``, ``replica``
and ``application`` tags); each Ray node serves what its processes record on its metrics
export port (``ray start --metrics-export-port``), under a ``ray_`` prefix, beside vLLM's
own engine metrics (``ray_vllm_*``, ``LLMConfig.log_engine_metrics``):

==============================================  =============================================
On the node's metrics port                      What it counts
==============================================  =============================================
``ray_openft_adapters_loaded``                  LoRA adapters resident on the replica now
``ray_openft_adapter_loads_total``              adapters downloaded and registered with vLLM
``ray_openft_adapter_evictions_total{reason}``  adapters dropped: ``lru`` (room for another)
                                                or ``deleted`` (gone from S3)
``ray_openft_adapter_load_seconds``             seconds a load took (histogram)
==============================================  =============================================

Every one carries ``base_model``. Adapter names never become tags: one series per fine-tuned
model would grow without bound and name other tenants' models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds: a small adapter from a nearby bucket to a large one over a slow link."""


class MetricKinds(Protocol):
    """The metric classes of ``ray.serve.metrics`` (a test passes stubs)."""

    def Counter(self, name: str, description: str = "",
                tag_keys: tuple[str, ...] | None = None) -> Any: ...

    def Gauge(self, name: str, description: str = "",
              tag_keys: tuple[str, ...] | None = None) -> Any: ...

    def Histogram(self, name: str, description: str = "",
                  boundaries: Sequence[float] | None = None,
                  tag_keys: tuple[str, ...] | None = None) -> Any: ...


class AdapterMetrics:
    """What :class:`serving.adapters.ResidentAdapters` reports of one replica's adapters.

    ``kinds`` defaults to ``ray.serve.metrics``; build this inside the replica, where Ray
    Serve's replica context gives the metrics their deployment and replica tags.
    """

    def __init__(self, base_model: str, kinds: MetricKinds | None = None) -> None:
        if kinds is None:
            from ray.serve import metrics as ray_serve_metrics

            kinds = ray_serve_metrics
        self._tags = {"base_model": base_model}
        self._resident = kinds.Gauge(
            "openft_adapters_loaded", "LoRA adapters resident on this replica.",
            tag_keys=("base_model",))
        self._loads = kinds.Counter(
            "openft_adapter_loads", "LoRA adapters downloaded from S3 and registered.",
            tag_keys=("base_model",))
        self._evictions = kinds.Counter(
            "openft_adapter_evictions",
            "LoRA adapters dropped from this replica: lru (room for another) or deleted "
            "(gone from S3).", tag_keys=("base_model", "reason"))
        self._load_seconds = kinds.Histogram(
            "openft_adapter_load_seconds", "Seconds to download and register an adapter.",
            boundaries=list(LOAD_BUCKETS), tag_keys=("base_model",))
        self._resident.set(0, tags=self._tags)

    def loaded(self, seconds: float, resident: int) -> None:
        self._loads.inc(1, tags=self._tags)
        self._load_seconds.observe(seconds, tags=self._tags)
        self._resident.set(resident, tags=self._tags)

    def evicted(self, reason: str, resident: int) -> None:
        self._evictions.inc(1, tags=self._tags | {"reason": reason})
        self._resident.set(resident, tags=self._tags)
