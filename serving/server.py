"""The model replica: Ray Serve LLM's ``LLMServer`` with adapter registration serialised.

Ray's ``VLLMEngine.resolve_lora`` checks whether an adapter is registered and then awaits its
registration. Two requests that name a new adapter at the same moment both pass the check,
and the second fails with vLLM's "has already been loaded" as a 500. One ``asyncio.Lock`` per
adapter name around that check-then-load fixes it (vLLM's own ``models/serving.py`` does the
same for its resolvers).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
from ray.serve.llm.deployment import LLMServer


class AdapterLockingEngine(VLLMEngine):
    """vLLM engine whose adapter registration holds one lock per adapter name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._adapter_locks: dict[str, asyncio.Lock] = {}

    async def resolve_lora(self, disk_lora_model: Any) -> None:
        lock = self._adapter_locks.setdefault(disk_lora_model.model_id, asyncio.Lock())
        async with lock:
            await super().resolve_lora(disk_lora_model)


class OpenFTServer(LLMServer):
    """``LLMServer`` running ``AdapterLockingEngine`` (through its ``engine_cls`` seam)."""

    async def __init__(self, llm_config: Any, **kwargs: Any) -> None:
        kwargs.setdefault("engine_cls", AdapterLockingEngine)
        await super().__init__(llm_config, **kwargs)
