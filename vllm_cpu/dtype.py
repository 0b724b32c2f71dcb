"""What ``dtype: auto`` means for an engine on a CPU: float32 where the CPU has no bf16 arithmetic.

Why: vLLM's CPU platform lists bf16 as native on every x86 CPU, so ``auto`` runs a bf16
checkpoint (and, by vLLM's CPU rules, an fp32 one) in bf16. x86 CPUs without AVX-512 BF16
(AMD before Zen 4, Intel before Cooper Lake) have no bf16 multiply: PyTorch and vLLM's
kernels convert every operand to fp32 and back, and a bf16 model runs several times slower
than the same model in fp32. Measured on an AMD EPYC Zen 3 (AVX2), SmolLM2-135M in vLLM's
offline engine, 16 sequences of 32 greedy tokens: 25 s in bf16, 9 s in fp32
(``bench/results/serving.md`` for the served numbers). fp16 is no better there (AVX2 has
only conversions). So on such a CPU openft's replicas ask vLLM for float32, at twice the
weights' memory; a dtype set explicitly in the serving config is always kept.

Where the CPU has bf16 units (AVX-512 BF16, AMX), and on GPUs, ``auto`` stays vLLM's.
"""

from __future__ import annotations

import logging
import platform

# Replicas log through Ray Serve's logger (the replica's log file); elsewhere it is a plain logger.
logger = logging.getLogger("ray.serve")

X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686"})


def engine_dtype(requested: str, *, on_cpu: bool, x86: bool, bf16_units: bool) -> str:
    """The dtype to give vLLM for a configured ``requested`` dtype."""
    if requested == "auto" and on_cpu and x86 and not bf16_units:
        return "float32"
    return requested


def cpu_has_bf16_units() -> bool:
    """AVX-512 BF16 or AMX, the x86 instructions that multiply bf16 without emulation."""
    # torch only to look at this machine: engine_dtype, the rule, runs without it.
    from vllm_cpu import torch_private

    return torch_private.cpu_has_avx512_bf16() or torch_private.cpu_has_amx()


def this_machine_engine_dtype(requested: str) -> str:
    """``engine_dtype`` for the process's own platform and CPU (vLLM's current platform)."""
    # vLLM only to look at this machine: engine_dtype, the rule, runs without it.
    from vllm_cpu import vllm_private

    on_cpu = vllm_private.on_cpu()
    x86 = platform.machine().lower() in X86_MACHINES
    dtype = engine_dtype(requested, on_cpu=on_cpu, x86=x86,
                         bf16_units=on_cpu and x86 and cpu_has_bf16_units())
    if dtype != requested:
        logger.info("dtype %r runs as %s: this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX), "
                    "and bf16 would run several times slower; set dtype in the serving config "
                    "to choose another", requested, dtype)
    return dtype
