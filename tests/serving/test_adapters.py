"""ResidentAdapters with fake S3 and engine: LRU evictions unload, deleted adapters leave."""

from __future__ import annotations

import asyncio

import pytest

from serving.adapters import AdapterGone, ResidentAdapters


class Fakes:
    def __init__(self) -> None:
        self.in_s3 = {"b:a", "b:b", "b:c"}
        self.events: list[str] = []
        self.now = 0.0

    async def exists(self, model_id: str) -> bool:
        self.events.append(f"check {model_id}")
        return model_id in self.in_s3

    async def load(self, model_id: str) -> None:
        self.events.append(f"load {model_id}")

    async def unload(self, model_id: str) -> None:
        self.events.append(f"unload {model_id}")

    def adapters(self, capacity: int = 1, recheck_s: float = 5.0) -> ResidentAdapters:
        return ResidentAdapters(capacity, recheck_s, self.exists, self.load, self.unload,
                                clock=lambda: self.now)


def run(coro):
    return asyncio.run(coro)


def test_lru_of_one_unloads_the_old_adapter_and_reloads_it_when_named_again() -> None:
    fakes = Fakes()
    adapters = fakes.adapters(capacity=1, recheck_s=0.001)

    async def scenario() -> None:
        for name in ("b:a", "b:b", "b:a"):
            fakes.now += 1
            await adapters.use(name)

    run(scenario())
    loads = [e for e in fakes.events if not e.startswith("check")]
    assert loads == ["load b:a", "load b:b", "unload b:a", "load b:a", "unload b:b"]
    assert adapters.resident == ["b:a"]


def test_a_held_adapter_is_rechecked_in_s3_only_after_the_period() -> None:
    fakes = Fakes()
    adapters = fakes.adapters(capacity=2, recheck_s=5.0)

    async def scenario() -> None:
        await adapters.use("b:a")
        fakes.now = 4.0
        await adapters.use("b:a")
        fakes.now = 6.0
        await adapters.use("b:a")

    run(scenario())
    assert fakes.events.count("check b:a") == 2
    assert fakes.events.count("load b:a") == 1


def test_deleted_adapter_is_refused_and_unloaded_on_use_and_by_the_sweep() -> None:
    fakes = Fakes()
    adapters = fakes.adapters(capacity=4, recheck_s=5.0)

    async def scenario() -> None:
        await adapters.use("b:a")
        await adapters.use("b:b")
        fakes.in_s3 -= {"b:a", "b:b"}
        fakes.now = 10.0
        with pytest.raises(AdapterGone) as info:
            await adapters.use("b:a")
        assert info.value.status_code == 404
        assert adapters.resident == ["b:b"]
        await adapters.sweep()  # nobody asked for b:b: the sweep drops it anyway

    run(scenario())
    assert adapters.resident == []
    assert "unload b:a" in fakes.events and "unload b:b" in fakes.events


def test_unknown_adapter_is_never_loaded() -> None:
    fakes = Fakes()
    adapters = fakes.adapters()
    with pytest.raises(AdapterGone):
        run(adapters.use("b:missing"))
    assert fakes.events == ["check b:missing"]
