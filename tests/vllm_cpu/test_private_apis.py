"""The private vLLM and PyTorch names ``vllm_cpu`` relies on exist in the installed versions.

Each adapter (``vllm_cpu.vllm_private``, ``vllm_cpu.torch_private``) says which version it was
written for; a failure here names that version, the installed one and what is gone, before an
engine dies of it. No engine is started.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
import vllm

import vllm_cpu

PACKAGE = Path(vllm_cpu.__file__).parent


def _constant(module: str, name: str) -> Any:
    """A constant of an adapter, read from its source: known even where it cannot import."""
    for node in ast.parse((PACKAGE / f"{module}.py").read_text()).body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise LookupError(f"{module}.{name}")


PUNICA_CPU_OPS = _constant("vllm_private", "PUNICA_CPU_OPS")


def _vllm_gone(name: str, why: str = "is gone") -> str:
    return (f"written for {_constant('vllm_private', 'WRITTEN_FOR')}, installed vllm "
            f"{vllm.__version__}: {name} {why}")


def _torch_gone(name: str, why: str = "is gone") -> str:
    return (f"written for {_constant('torch_private', 'WRITTEN_FOR')}, installed torch "
            f"{torch.__version__}: {name} {why}")


@pytest.fixture
def vllm_private() -> Any:
    try:
        return importlib.import_module("vllm_cpu.vllm_private")
    except ImportError as e:
        pytest.fail(_vllm_gone(e.name or str(e), f"cannot be imported ({e})"))


@pytest.fixture
def lora(vllm_private: Any) -> Any:
    return importlib.import_module("vllm_cpu.lora")


@pytest.fixture
def torch_private() -> Any:
    return importlib.import_module("vllm_cpu.torch_private")


def _vllm_attr(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        pytest.fail(_vllm_gone(f"{module}.{name}"))


def _shape(function: Any) -> list[tuple[str, Any, Any]]:
    """What a call site relies on: parameter names, kinds and defaults, not annotations."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


# --- vLLM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PUNICA_CPU_OPS)
def test_punica_cpu_calls_ops_shaped_like_ours(name: str, lora: Any) -> None:
    """``PunicaWrapperCPU`` finds these names in its module; ours replace vLLM's torch ops
    there, so they must take the same arguments."""
    _vllm_attr("vllm.lora.punica_wrapper.punica_cpu", name)
    stock = _vllm_attr("vllm.lora.ops.torch_ops", name)
    assert _shape(getattr(lora, name)) == _shape(stock), _vllm_gone(
        f"vllm.lora.ops.torch_ops.{name}{inspect.signature(stock)}",
        f"is not shaped like vllm_cpu.lora.{name}{inspect.signature(getattr(lora, name))}")


@pytest.mark.parametrize(
    "method", ["update_metadata", "add_shrink", "add_expand", "add_lora_linear", "add_lora_logits"])
def test_punica_wrapper_methods_we_override_keep_their_signatures(method: str, lora: Any,
                                                                  vllm_private: Any) -> None:
    stock = getattr(vllm_private.PunicaWrapperCPU, method, None)
    assert stock is not None, _vllm_gone(f"PunicaWrapperCPU.{method}")
    ours = getattr(lora.GroupedPunicaWrapperCPU, method)
    assert _shape(ours) == _shape(stock), _vllm_gone(
        f"PunicaWrapperCPU.{method}{inspect.signature(stock)}",
        f"is not shaped like GroupedPunicaWrapperCPU.{method}{inspect.signature(ours)}")


def test_punica_wrapper_takes_the_lora_config_and_has_the_state_we_read(vllm_private: Any) -> None:
    config = _vllm_attr("vllm.config.lora", "LoRAConfig")(max_lora_rank=8)
    for field in ("lora_dtype", "max_lora_rank"):
        assert hasattr(config, field), _vllm_gone(f"LoRAConfig.{field}")
    try:
        wrapper = vllm_private.PunicaWrapperCPU(8, 8, device="cpu", lora_config=config)
    except TypeError as e:
        pytest.fail(_vllm_gone("PunicaWrapperCPU(..., lora_config=)", f"fails: {e}"))
    for attribute in ("token_lora_indices", "sampler_indices", "is_prefill"):
        assert hasattr(wrapper, attribute), _vllm_gone(f"PunicaWrapperCPU.{attribute}")


def test_the_cpu_platform_names_its_punica_wrapper_and_the_selector_builds_that(
        vllm_private: Any) -> None:
    from vllm.platforms import current_platform

    platform = type(current_platform)
    for name in ("is_cpu", "get_punica_wrapper"):
        assert callable(getattr(platform, name, None)), _vllm_gone(f"Platform.{name}")
    assert isinstance(inspect.getattr_static(platform, "get_punica_wrapper"), classmethod), (
        _vllm_gone("Platform.get_punica_wrapper", "is no longer a classmethod"))
    if vllm_private.on_cpu():
        assert vllm_private.punica_wrapper_name() in (
            "vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU",
            "vllm_cpu.lora.GroupedPunicaWrapperCPU",
        ), _vllm_gone("CpuPlatform.get_punica_wrapper() -> PunicaWrapperCPU")
    selector = _vllm_attr("vllm.lora.punica_wrapper.punica_selector", "get_punica_wrapper")
    assert "get_punica_wrapper()" in inspect.getsource(selector), _vllm_gone(
        "punica_selector.get_punica_wrapper", "no longer asks the platform for the class")


def test_the_unload_request_names_the_adapter(vllm_private: Any) -> None:
    try:
        request = vllm_private.unload_lora_adapter_request("ft-a")
    except ImportError:
        pytest.fail(_vllm_gone("vllm.entrypoints.serve.lora.protocol.UnloadLoRAAdapterRequest"))
    assert request.lora_name == "ft-a"
    serving_models = _vllm_attr("vllm.entrypoints.openai.models.serving", "OpenAIServingModels")
    assert callable(getattr(serving_models, "unload_lora_adapter", None)), _vllm_gone(
        "OpenAIServingModels.unload_lora_adapter")


# --- torch -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["_is_avx512_bf16_supported", "_is_amx_tile_supported",
                                  "_init_amx"])
def test_torch_cpu_probes_exist(name: str) -> None:
    assert callable(getattr(torch.cpu, name, None)), _torch_gone(f"torch.cpu.{name}")


def test_probes_answer_and_the_version_counter_counts_in_place_writes(torch_private: Any) -> None:
    assert isinstance(torch_private.cpu_has_avx512_bf16(), bool)
    assert isinstance(torch_private.cpu_has_amx(), bool)
    tensor = torch.zeros(2)
    try:
        before = torch_private.version(tensor)
    except AttributeError:
        pytest.fail(_torch_gone("Tensor._version"))
    tensor[0] = 1
    assert torch_private.version(tensor) != before, _torch_gone(
        "Tensor._version", "does not change on an in-place write")


# --- nothing else reaches past the adapters ----------------------------------------------------


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _private_torch_uses(tree: ast.AST) -> set[str]:
    """``torch.cpu._x`` and ``._version`` attribute reads."""
    return {ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and (node.attr == "_version"
                 or (node.attr.startswith("_") and ast.unparse(node.value) == "torch.cpu"))}


def test_only_the_adapters_touch_vllm_and_torch_internals() -> None:
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        if path.name != "vllm_private.py":
            vllm_imports = {m for m in _imports(tree) if m == "vllm" or m.startswith("vllm.")}
            assert not vllm_imports, f"{path.name} imports {vllm_imports}: use vllm_private"
        if path.name != "torch_private.py":
            uses = _private_torch_uses(tree)
            assert not uses, f"{path.name} uses {uses}: use torch_private"
