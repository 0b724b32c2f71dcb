"""Every private Ray Serve LLM name serving uses, in one place, behind names of ours.

Written for ray 2.60.0. ``tests/serving/test_private_apis.py`` checks each name below against
the installed Ray and names the one that is gone; on a Ray upgrade, run it first and fix this
module, nothing else.

Why private names at all: Ray Serve LLM's public ``LLMServer`` takes an engine class and an
adapter downloader by injection (``engine_cls=``, ``model_downloader=``), but the classes to
extend live only under ``ray.llm._internal`` (``VLLMEngine``, ``LoraModelLoader``), and
nothing public unloads an adapter, reaches vLLM's OpenAI serving objects, or replaces the
step every request takes to load its adapter. Serving needs each of those for its adapter
lifecycle (``serving.server``):

- ``VLLMEngine``: extended as ``Engine``. Its private ``_oai_models`` (vLLM's
  ``OpenAIServingModels``: ``lora_requests``, ``unload_lora_adapter``) and
  ``_oai_serving_chat`` / ``_oai_serving_completion`` (their ``system_fingerprint``).
- ``LoraModelLoader``: extended as ``AdapterLoader``. Its ``disk_cache`` (what it downloaded)
  and private ``_model_dir_path`` (where).
- ``LLMServer`` (public) and its private members: ``_maybe_resolve_lora_from_multiplex``,
  the per-request adapter step that its handle methods and its ASGI middleware call;
  ``_load_model``, the Serve-multiplexed download; ``_llm_config``.
- ``DEFAULT_ENDPOINTS`` of Ray's ingress module: the routes ``OpenAiIngress`` serves, which
  ``serving.ingress`` must each put behind the serving token (nothing public lists them).
- ``CallbackBase``: extended as ``SkipNodeDownload``, the documented way
  (``LLMConfig.callback_config``) to switch off Ray's per-node model download, whose base
  class Ray exports only privately.
- ``VLLMEngineConfig`` (what ``LLMConfig.get_engine_config()`` returns and caches): its
  ``hf_model_id`` (vLLM's ``model``) and ``mirror_config`` (what Ray itself would download),
  which the replica points at the base model's folder on its node (``serving.base_model``).
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from ray.llm._internal.common.callbacks.base import CallbackBase
from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS
from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader
from ray.serve.llm.deployment import LLMServer

from vllm_cpu.vllm_private import unload_lora_adapter_request

WRITTEN_FOR = "ray 2.60.0"


def ingress_routes() -> list[str]:
    """Names of the ingress methods Ray routes HTTP requests to (``chat``, ``models``, ...)."""
    return list(DEFAULT_ENDPOINTS)


class Engine(VLLMEngine):
    """Ray's vLLM engine, with the vLLM objects it keeps privately reachable."""

    def registered_adapters(self) -> Container[str]:
        """Names of the adapters registered with vLLM."""
        return self._oai_models.lora_requests

    async def unload_adapter(self, model_id: str) -> None:
        """Unregister ``model_id`` from vLLM (it frees the weights through its own LRU)."""
        await self._oai_models.unload_lora_adapter(unload_lora_adapter_request(model_id))

    def openai_servings(self) -> list[Any]:
        """vLLM's chat and completion serving objects that the engine started."""
        return [serving for serving in (self._oai_serving_chat, self._oai_serving_completion)
                if serving is not None]


class SkipNodeDownload(CallbackBase):
    """Ray's engine start, without its per-node model download.

    Before vLLM starts, Ray Serve LLM runs one task per node of the engine's placement group
    to download the model there. openft's replica has already put the base model's folder on
    its node (``serving.base_model``: fetched once per node, checked against the manifest),
    and the group is packed on that node, so each task only returns the folder it was given.
    It still costs a fresh Ray worker process that imports torch and transformers: 16 s of a
    replica's start on a 2-core CPU, for nothing.
    """

    async def on_before_node_init(self) -> None:
        self.ctx.run_init_node = False


class AdapterLoader(LoraModelLoader):
    """Ray's adapter downloader, with a way to forget a download."""

    def forget_download(self, model_id: str) -> str:
        """Drop ``model_id`` from the downloads in memory; return its folder (which exists)."""
        self.disk_cache.pop(model_id, None)
        return self._model_dir_path(model_id)


def use_model_folder(llm_config: Any, folder: str) -> None:
    """Make the engine config Ray derived from ``llm_config`` (built in the deploy driver and
    cached on it) load ``folder``, in place: ``hf_model_id`` becomes vLLM's ``model``, and
    with no mirror left Ray's engine start resolves nothing else in its place (nor would its
    per-node download step, which ``SkipNodeDownload`` skips)."""
    engine = llm_config.get_engine_config()
    engine.hf_model_id = folder
    engine.mirror_config = None


class Server(LLMServer):
    """``LLMServer`` whose per-request adapter step is ``resolve_request_adapter``."""

    async def _maybe_resolve_lora_from_multiplex(self) -> None:
        await self.resolve_request_adapter()

    async def resolve_request_adapter(self) -> None:
        """Ray's step: load the request's adapter (Serve's multiplex LRU) and register it."""
        await super()._maybe_resolve_lora_from_multiplex()

    async def load_multiplexed(self, model_id: str) -> Any:
        """Serve's multiplexed download of ``model_id``: it also tells the router that this
        replica holds the adapter."""
        return await self._load_model(model_id)

    def served_llm_config(self) -> Any:
        """The ``LLMConfig`` this replica serves."""
        return self._llm_config
