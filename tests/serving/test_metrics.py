"""Serving's metrics without Ray: what a replica's adapter residency records, and vLLM's
engine metrics switched on in the LLMConfig serving builds."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from serving.adapters import ResidentAdapters
from serving.app import llm_config
from serving.config import ServingConfig
from serving.metrics import LOAD_BUCKETS, AdapterMetrics


@dataclass
class Recorded:
    """A stub of one ``ray.serve.metrics`` metric: what was recorded, with which tags."""

    name: str
    tag_keys: tuple[str, ...]
    boundaries: Sequence[float] | None = None
    values: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    def _record(self, value: float, tags: dict[str, str]) -> None:
        assert set(tags) == set(self.tag_keys), (self.name, tags)
        self.values.append((value, dict(tags)))

    inc = set = observe = _record


class StubKinds:
    """Stands in for ``ray.serve.metrics``: each class call makes a :class:`Recorded`."""

    def __init__(self) -> None:
        self.made: dict[str, Recorded] = {}

    def Counter(self, name: str, description: str = "",  # noqa: N802
                tag_keys: tuple[str, ...] | None = None) -> Recorded:
        return self._make(name, tag_keys)

    def Gauge(self, name: str, description: str = "",  # noqa: N802
              tag_keys: tuple[str, ...] | None = None) -> Recorded:
        return self._make(name, tag_keys)

    def Histogram(self, name: str, description: str = "",  # noqa: N802
                  boundaries: Sequence[float] | None = None,
                  tag_keys: tuple[str, ...] | None = None) -> Recorded:
        return self._make(name, tag_keys, boundaries)

    def _make(self, name: str, tag_keys: tuple[str, ...] | None,
              boundaries: Sequence[float] | None = None) -> Recorded:
        assert name not in self.made
        self.made[name] = Recorded(name, tag_keys or (), boundaries)
        return self.made[name]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_loads_evictions_and_residency_are_recorded_per_base_model() -> None:
    kinds, clock, in_s3 = StubKinds(), Clock(), {"tiny:a", "tiny:b"}

    async def exists(model_id: str) -> bool:
        return model_id in in_s3

    async def load(model_id: str) -> None:
        clock.now += 2.5  # the download and registration take 2.5 s

    async def unload(model_id: str) -> None:
        pass

    adapters = ResidentAdapters(1, 0.0, exists, load, unload, clock=clock,
                                events=AdapterMetrics("tiny", kinds=kinds))

    async def scenario() -> None:
        await adapters.use("tiny:a")
        await adapters.use("tiny:b")  # capacity 1: a leaves
        in_s3.discard("tiny:b")
        clock.now += 1
        await adapters.sweep()  # b was deleted: it leaves too

    asyncio.run(scenario())

    m = kinds.made
    assert set(m) == {"openft_adapters_loaded", "openft_adapter_loads",
                      "openft_adapter_evictions", "openft_adapter_load_seconds"}
    tiny = {"base_model": "tiny"}
    assert m["openft_adapter_loads"].values == [(1, tiny), (1, tiny)]
    assert m["openft_adapter_load_seconds"].values == [(2.5, tiny), (2.5, tiny)]
    assert m["openft_adapter_load_seconds"].boundaries == list(LOAD_BUCKETS)
    assert m["openft_adapter_evictions"].values == [
        (1, tiny | {"reason": "lru"}), (1, tiny | {"reason": "deleted"})]
    # Zero at the start; a in; b in (both held until a is unloaded); a out; b deleted.
    assert [v for v, _ in m["openft_adapters_loaded"].values] == [0, 1, 2, 1, 0]
    # No adapter name in any tag: a series per fine-tuned model would never stop growing.
    for metric in m.values():
        for _, tags in metric.values:
            assert not any("tiny:" in value for value in tags.values())


def test_without_events_residency_is_unchanged() -> None:
    async def yes(model_id: str) -> bool:
        return True

    async def nothing(model_id: str) -> None:
        pass

    adapters = ResidentAdapters(1, 5.0, yes, nothing, nothing)
    asyncio.run(adapters.use("tiny:a"))
    assert adapters.resident == ["tiny:a"]


@pytest.mark.parametrize("accelerator", ["cpu", "gpu"])
def test_vllm_engine_metrics_are_on(accelerator: str) -> None:
    config = ServingConfig.model_validate({"base_models": [{"id": "tiny"}], "s3_bucket": "b"})
    llm = llm_config(config, config.base_models[0], accelerator)

    assert llm.log_engine_metrics is True
    # Ray's engine exports vLLM's stat loggers; this switch would silence them.
    assert not llm.engine_kwargs.get("disable_log_stats")
