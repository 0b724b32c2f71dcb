"""The private Ray Serve LLM names serving relies on exist in the installed Ray.

``serving.ray_llm_private`` says which Ray it was written for; a failure here names that
version, the installed one and what is gone, before a replica dies of it. No Ray is started.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import ray

import serving

PRIVATE = "serving.ray_llm_private"
ENGINE = "ray.llm._internal.serve.engines.vllm.vllm_engine"
LOADER = "ray.llm._internal.serve.utils.lora_serve_utils"
SERVER = "ray.llm._internal.serve.core.server.llm_server"
DOWNLOAD = "ray.llm._internal.common.utils.download_utils"
INGRESS = "ray.llm._internal.serve.core.ingress.ingress"
INGRESS_BUILDER = "ray.llm._internal.serve.core.ingress.builder"
DP_BUILDER = "ray.llm._internal.serve.serving_patterns.data_parallel.builder"
CALLBACKS = "ray.llm._internal.common.callbacks.base"


def _written_for() -> str:
    """The adapter's ``WRITTEN_FOR``, read from its source: known even where it cannot import."""
    source = (Path(serving.__file__).parent / "ray_llm_private.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [
                "WRITTEN_FOR"]:
            return ast.literal_eval(node.value)
    raise LookupError("WRITTEN_FOR")


def _gone(name: str, why: str = "is gone") -> str:
    return f"written for {_written_for()}, installed ray {ray.__version__}: {name} {why}"


def _attr(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        pytest.fail(_gone(f"{module}.{name}"))


def _self_attributes(cls: type) -> set[str]:
    """Attributes the class's own methods (and its bases') assign on ``self``."""
    names = set()
    for klass in cls.__mro__[:-1]:
        for node in ast.walk(ast.parse(inspect.getsource(klass).lstrip())):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            names.update(t.attr for t in targets if isinstance(t, ast.Attribute)
                         and isinstance(t.value, ast.Name) and t.value.id == "self")
    return names


@pytest.mark.parametrize(("module", "name"), [(ENGINE, "VLLMEngine"), (LOADER, "LoraModelLoader")])
def test_the_classes_serving_extends_are_where_they_were(module: str, name: str) -> None:
    _attr(module, name)


def test_the_adapter_imports() -> None:
    try:
        importlib.import_module(PRIVATE)
    except ImportError as e:
        pytest.fail(_gone(e.name or str(e), f"cannot be imported ({e})"))


def test_the_engine_keeps_vllms_serving_objects_and_resolves_adapters() -> None:
    engine = _attr(ENGINE, "VLLMEngine")
    kept = _self_attributes(engine)
    for name in ("_oai_models", "_oai_serving_chat", "_oai_serving_completion"):
        assert name in kept, _gone(f"VLLMEngine.{name}")
    resolve = getattr(engine, "resolve_lora", None)
    assert inspect.iscoroutinefunction(resolve), _gone("VLLMEngine.resolve_lora")
    assert list(inspect.signature(resolve).parameters) == ["self", "disk_lora_model"], _gone(
        f"VLLMEngine.resolve_lora{inspect.signature(resolve)}", "changed")


def test_the_loader_keeps_its_downloads_where_we_look(tmp_path: Path) -> None:
    loader = _attr(LOADER, "LoraModelLoader")(lora_root=str(tmp_path))
    assert isinstance(getattr(loader, "disk_cache", None), dict), _gone(
        "LoraModelLoader.disk_cache")
    assert getattr(loader, "lora_root", None) == str(tmp_path), _gone("LoraModelLoader.lora_root")
    model_dir = getattr(loader, "_model_dir_path", None)
    assert model_dir is not None, _gone("LoraModelLoader._model_dir_path")
    folder = Path(model_dir("base:ftkey-1"))
    assert folder.is_dir() and folder.parent == tmp_path, _gone(
        "LoraModelLoader._model_dir_path", f"puts downloads in {folder}, not under lora_root")
    assert list(inspect.signature(loader.load_model_from_config).parameters) == [
        "lora_model_id", "llm_config"], _gone("LoraModelLoader.load_model_from_config", "changed")


def test_the_server_calls_the_adapter_step_we_replace_on_every_request() -> None:
    server = _attr("ray.serve.llm.deployment", "LLMServer")
    step = getattr(server, "_maybe_resolve_lora_from_multiplex", None)
    assert inspect.iscoroutinefunction(step), _gone("LLMServer._maybe_resolve_lora_from_multiplex")
    assert list(inspect.signature(step).parameters) == ["self"], _gone(
        "LLMServer._maybe_resolve_lora_from_multiplex()", "takes arguments now")
    # Handle calls and the ASGI middleware (vLLM's own routes) both go through it.
    calls = inspect.getsource(importlib.import_module(SERVER)).count(
        "._maybe_resolve_lora_from_multiplex()")
    assert calls >= 2, _gone("the calls of LLMServer._maybe_resolve_lora_from_multiplex",
                             f"are {calls}, were 2 (request path and ASGI middleware)")
    kept = _self_attributes(server)
    for name in ("_load_model", "_llm_config", "engine"):
        assert name in kept, _gone(f"LLMServer.{name}")
    parameters = inspect.signature(server.__init__).parameters
    for name in ("engine_cls", "model_downloader"):
        assert name in parameters, _gone(f"LLMServer(..., {name}=)")


def test_the_engine_loads_the_folder_a_replica_points_its_config_at(tmp_path: Path) -> None:
    """``use_model_folder`` changes the engine config Ray cached in the driver; the engine
    and Ray's per-node download step must read that one, and download nothing without a
    mirror."""
    from serving.app import llm_config
    from serving.config import ServingConfig
    from serving.ray_llm_private import use_model_folder

    config = ServingConfig.model_validate({"base_models": [{"id": "m"}], "s3_bucket": "b"})
    llm = llm_config(config, config.base_models[0], "gpu")
    cached = llm.get_engine_config()
    for name in ("hf_model_id", "mirror_config"):
        assert name in type(cached).model_fields, _gone(f"VLLMEngineConfig.{name}")
    assert cached.mirror_config is not None  # an s3:// source is a mirror to Ray

    use_model_folder(llm, str(tmp_path))

    assert llm.get_engine_config() is cached, _gone("LLMConfig.get_engine_config's cache")
    assert cached.get_initialization_kwargs()["model"] == str(tmp_path), _gone(
        "VLLMEngineConfig.hf_model_id as vLLM's model")
    engine_start = inspect.getsource(_attr(ENGINE, "_get_vllm_engine_config"))
    assert "llm_config.get_engine_config()" in engine_start, _gone(
        "_get_vllm_engine_config's use of the cached engine config")
    download = _attr(DOWNLOAD, "download_model_files")
    assert download(model_id=str(tmp_path), mirror_config=None) == str(tmp_path), _gone(
        "download_model_files", "no longer passes a local folder through")
    assert sorted(tmp_path.iterdir()) == []  # nothing downloaded into it


def test_the_engine_start_skips_rays_per_node_download_when_our_callback_says_so() -> None:
    """``SkipNodeDownload`` (what every serving config names) clears the flag Ray's engine
    start reads before it runs its per-node download tasks; were the flag renamed, each
    replica would quietly pay for the tasks again."""
    import asyncio

    from serving.app import llm_config
    from serving.config import ServingConfig
    from serving.ray_llm_private import SkipNodeDownload

    _attr(CALLBACKS, "CallbackBase")
    start = inspect.getsource(_attr(ENGINE, "VLLMEngine").start)
    assert re.search(r"if callback\.ctx\.run_init_node:\s*\n\s*await initialize_node", start), \
        _gone("VLLMEngine.start's `if callback.ctx.run_init_node: await initialize_node(...)`")
    assert start.index('"on_before_node_init"') < start.index("run_init_node"), _gone(
        "the on_before_node_init callback before the per-node download")

    config = ServingConfig.model_validate({"base_models": [{"id": "m"}], "s3_bucket": "b"})
    callback = llm_config(config, config.base_models[0], "cpu").get_or_create_callback()
    assert isinstance(callback, SkipNodeDownload)
    assert callback.ctx.run_init_node, _gone("CallbackCtx.run_init_node's default True")
    asyncio.run(callback.run_callback("on_before_node_init"))
    assert callback.ctx.run_init_node is False


def test_only_the_adapter_imports_ray_llm_internals_and_vllm() -> None:
    """Serving reaches vLLM only through ``vllm_cpu`` (its private names: ``vllm_private``)."""
    for path in Path(serving.__file__).parent.glob("*.py"):
        modules = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module)
        internal = {m for m in modules if m.startswith("ray.llm._internal")}
        assert path.name == "ray_llm_private.py" or not internal, (
            f"{path.name} imports {internal}: use {PRIVATE}")
        vllm = {m for m in modules if m == "vllm" or m.startswith("vllm.")}
        assert not vllm, f"{path.name} imports {vllm}: use vllm_cpu"


def test_every_route_of_rays_ingress_is_one_serving_checks() -> None:
    """The ingress puts each route Ray declares behind the serving token; one Ray adds would
    be open to anyone who reaches the proxy (``OpenFTIngress`` refuses to start then)."""
    from serving.ingress import REFUSED_ROUTES, SERVED_ROUTES

    routes = _attr(INGRESS, "DEFAULT_ENDPOINTS")
    unchecked = set(routes) - SERVED_ROUTES - REFUSED_ROUTES
    assert not unchecked, _gone(f"the ingress routes {sorted(unchecked)}", "are new")
    # Ray's builders route by these defaults: they pass no endpoint map of their own.
    builders = [importlib.import_module(m) for m in (INGRESS_BUILDER, DP_BUILDER)]
    for builder in builders:
        calls = re.findall(r"make_fastapi_ingress\(([^)]*)\)", inspect.getsource(builder))
        assert calls and all("endpoint_map" not in c for c in calls), _gone(
            f"{builder.__name__}'s make_fastapi_ingress call", "changed")
