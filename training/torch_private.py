"""The private PyTorch names training uses, in one place (written for torch 2.13.0).

PyTorch has no public call that says whether the CPU multiplies bf16 in hardware:
``torch.cpu._is_avx512_bf16_supported`` and ``torch.cpu._is_amx_tile_supported`` are what its
own CPU kernels ask. ``training`` may not import ``vllm_cpu`` (which has its own adapter for
vLLM's process), hence this one. ``tests/training/test_private_apis.py`` fails, naming the
version this was written for, when an upgrade moves them.
"""

from __future__ import annotations

import torch

WRITTEN_FOR = "2.13.0"
"""The torch version whose internals this module was written against."""


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX tiles): there bf16
    training runs about 1.7x the tokens/s of fp32 in less memory; elsewhere it is emulated
    and slower."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
