"""The model replica: Ray Serve LLM's ``LLMServer`` with an adapter lifecycle of our own.

Ray's ``VLLMEngine.resolve_lora`` checks whether an adapter is registered and then awaits its
registration. Two requests that name a new adapter at the same moment both pass the check,
and the second fails with vLLM's "has already been loaded" as a 500. One ``asyncio.Lock`` per
adapter name around that check-then-load fixes it (vLLM's own ``models/serving.py`` does the
same for its resolvers).

Ray Serve LLM never unregisters an adapter: its multiplex LRU forgets the download but vLLM
keeps the name, and the local copy is cached for the replica's life. ``ResidentAdapters``
(``serving.adapters``) replaces that: an LRU whose evictions really unregister, downloads into
a folder of this replica's own, and S3 checks that drop deleted adapters on every replica.

Before any of it, the replica finds its base model on its node (``serving.base_model``): the
config the deploy driver built names a source, which may be a registered model to fetch.

Ray's private names these classes rely on are reached through ``serving.ray_llm_private``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import torch
from botocore.exceptions import ClientError
from ray import serve

from contract.bucket import ADAPTER_CONFIG, DELETED_MARKER
from serving.adapters import ResidentAdapters
from serving.base_model import use_local_folder
from serving.metrics import AdapterMetrics
from serving.ray_llm_private import AdapterLoader, Engine, Server
from vllm_cpu.dtype import this_machine_engine_dtype

ADAPTER_RECHECK_KEY = "openft_adapter_recheck_s"
"""``LLMConfig.experimental_configs`` key carrying ``ServingConfig.adapter_recheck_s``."""


class AdapterLockingEngine(Engine):
    """vLLM engine whose adapter registration holds one lock per adapter name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._adapter_locks: dict[str, asyncio.Lock] = {}

    async def resolve_lora(self, disk_lora_model: Any) -> None:
        async with self._lock(disk_lora_model.model_id):
            await super().resolve_lora(disk_lora_model)

    async def unregister_lora(self, model_id: str) -> None:
        """Forget the adapter's name: the next request for it registers it afresh (new id, so
        vLLM reads the weights again); vLLM's own LRU frees the old weights."""
        async with self._lock(model_id):
            if model_id in self.registered_adapters():
                await self.unload_adapter(model_id)

    def _lock(self, model_id: str) -> asyncio.Lock:
        return self._adapter_locks.setdefault(model_id, asyncio.Lock())

    def name_replica_in_fingerprint(self, replica: str) -> None:
        """Append ``replica`` to vLLM's ``system_fingerprint`` (version and config hash).

        OpenAI says a fingerprint tells when a seeded answer may change; with several
        replicas that is per replica, and operators (and tests) learn which replica answered.
        """
        for serving in self.openai_servings():
            serving.system_fingerprint = f"{serving.system_fingerprint or 'vllm'}-{replica}"


LORA_DIR_PREFIX = "openft-lora-"
"""Adapter folders are ``<tmp>/openft-lora-<pid>-<random>``: the pid tells whose they are."""


def replica_lora_root(tmp: Path | None = None) -> Path:
    """A new adapter folder for this process, after removing those of processes that are gone.

    A replica that stops cleanly removes its folder (``OpenFTServer.__del__``); one that was
    killed cannot, so the next replica on the node does.
    """
    tmp = Path(tmp or tempfile.gettempdir())
    for folder in tmp.glob(f"{LORA_DIR_PREFIX}*-*"):
        pid = folder.name.removeprefix(LORA_DIR_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{LORA_DIR_PREFIX}{os.getpid()}-", dir=tmp))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, and not ours to judge
    return True


class ReplicaAdapterLoader(AdapterLoader):
    """Ray's S3 downloader, into a folder only this replica uses, with a way to forget.

    Ray's default folder is shared by every replica on a node; a replica that deletes its copy
    must not pull it from under another one.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(lora_root=str(replica_lora_root()), **kwargs)

    def forget(self, model_id: str) -> None:
        shutil.rmtree(self.forget_download(model_id), ignore_errors=True)

    def remove_all(self) -> None:
        shutil.rmtree(self.lora_root, ignore_errors=True)


def use_torch_lora_dtype(llm_config: Any) -> None:
    """Make ``llm_config.engine_kwargs["lora_dtype"]`` a ``torch.dtype``, in place.

    ``ServingConfig.lora_dtype`` is a name; vLLM's ``LoRAConfig`` takes only ``auto``,
    ``float16`` and ``bfloat16`` by name and fp32 (serving's CPU default) only as
    ``torch.float32``. The replica converts it: the LLMConfig the driver builds keeps the name.
    ``update_engine_kwargs`` also updates the engine config Ray caches on the LLMConfig.
    """
    name = llm_config.engine_kwargs.get("lora_dtype")
    if isinstance(name, str) and name != "auto":
        llm_config.update_engine_kwargs(lora_dtype=getattr(torch, name))


def use_machine_dtype(llm_config: Any,
                      machine_dtype: Callable[[str], str] = this_machine_engine_dtype) -> None:
    """Resolve ``engine_kwargs["dtype"]`` for this replica's machine, in place
    (``vllm_cpu.dtype``: ``auto`` on a CPU without bf16 units runs in float32).

    Here, not in the deploy driver: the replica and its engine share one placement-group
    bundle, so the replica's CPU is the engine's (``machine_dtype``: the rule for this
    machine, a seam for tests). Only for an engine on CPU: on GPU the
    replica itself holds no GPU, so vLLM in it may see only the host's CPU, whose bf16
    units say nothing about the GPU's.
    """
    if llm_config.accelerator_config.kind != "cpu":
        return
    requested = llm_config.engine_kwargs.get("dtype", "auto")
    dtype = machine_dtype(requested)
    if dtype != requested:
        llm_config.update_engine_kwargs(dtype=dtype)


class OpenFTServer(Server):
    """``LLMServer`` running ``AdapterLockingEngine`` with adapters kept by ``ResidentAdapters``."""

    async def __init__(self, llm_config: Any, **kwargs: Any) -> None:
        # Before Ray starts the engine: the base model's folder on this node (a fetch of
        # gigabytes, off the event loop that answers Serve's health checks).
        await asyncio.to_thread(use_local_folder, llm_config)
        use_torch_lora_dtype(llm_config)
        use_machine_dtype(llm_config)
        kwargs.setdefault("engine_cls", AdapterLockingEngine)
        self._loader: ReplicaAdapterLoader | None = None
        self._s3: Any = None
        self._adapters: ResidentAdapters | None = None
        self._sweeper: asyncio.Task[None] | None = None
        kwargs.setdefault("model_downloader", self._make_loader)
        await super().__init__(llm_config, **kwargs)
        if isinstance(self.engine, AdapterLockingEngine):
            self.engine.name_replica_in_fingerprint(
                serve.get_replica_context().replica_id.unique_id)
        lora = llm_config.lora_config
        if lora is not None:
            uri = urlparse(lora.dynamic_lora_loading_path)
            self._bucket, self._prefix = uri.netloc, uri.path.strip("/")
            self._adapters = ResidentAdapters(
                capacity=lora.max_num_adapters_per_replica,
                recheck_s=float(llm_config.experimental_configs.get(ADAPTER_RECHECK_KEY, 5.0)),
                exists=self._adapter_exists,
                load=self._register,
                unload=self._unregister,
                events=AdapterMetrics(base_model=llm_config.model_id),
            )
            self._sweeper = asyncio.create_task(self._adapters.sweep_forever())

    async def __del__(self) -> None:
        """Serve calls this when the replica stops: stop the engine, then drop the adapters."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        try:
            await super().__del__()
        finally:
            if self._loader is not None:
                self._loader.remove_all()

    def _make_loader(self, **kwargs: Any) -> ReplicaAdapterLoader:
        self._loader = ReplicaAdapterLoader(**kwargs)
        return self._loader

    async def resolve_request_adapter(self) -> None:
        """Every adapter request, on every path Ray has (handle calls and direct ASGI)."""
        model_id = serve.get_multiplexed_model_id()
        if not model_id or self._adapters is None:
            return await super().resolve_request_adapter()
        await self._adapters.use(model_id)
        # Serve's multiplex LRU (same size and order as ours) tells the router where it lives.
        await self.load_multiplexed(model_id)

    async def _register(self, model_id: str) -> None:
        assert self._loader is not None and self.engine is not None
        disk = await self._loader.load_model_from_config(model_id, self.served_llm_config())
        await self.engine.resolve_lora(disk)

    async def _unregister(self, model_id: str) -> None:
        assert self._loader is not None and isinstance(self.engine, AdapterLockingEngine)
        await self.engine.unregister_lora(model_id)
        self._loader.forget(model_id)

    async def _adapter_exists(self, model_id: str) -> bool:
        key = f"{self._prefix}/{model_id.split(':', 1)[1]}"
        present, deleted = await asyncio.gather(
            asyncio.to_thread(self._s3_has, f"{key}/{ADAPTER_CONFIG}"),
            asyncio.to_thread(self._s3_has, f"{key}/{DELETED_MARKER}"),
        )
        return present and not deleted

    def _s3_has(self, key: str) -> bool:
        """Whether the object exists; endpoint and keys come from the replica's ``AWS_*`` env."""
        if self._s3 is None:
            self._s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
        try:
            self._s3.head_object(Bucket=self._bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True
