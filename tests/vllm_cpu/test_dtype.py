"""``dtype: auto`` on a CPU without bf16 units runs the engine in float32 (vllm_cpu.dtype).

What a serving replica passes on to vLLM is tested in ``tests/serving/test_machine_dtype.py``.
"""

from __future__ import annotations

import pytest

from vllm_cpu.dtype import engine_dtype


@pytest.mark.parametrize(
    ("requested", "on_cpu", "x86", "bf16_units", "expected"),
    [
        ("auto", True, True, False, "float32"),  # AVX2-only x86: bf16 would be emulated
        ("auto", True, True, True, "auto"),  # AVX-512 BF16 / AMX: vLLM's bf16
        ("auto", False, True, False, "auto"),  # a GPU engine
        ("auto", True, False, False, "auto"),  # aarch64 and others: vLLM's own choice
        ("bfloat16", True, True, False, "bfloat16"),  # an explicit dtype is the user's
        ("float16", True, True, False, "float16"),
    ],
)
def test_engine_dtype(requested: str, on_cpu: bool, x86: bool, bf16_units: bool,
                      expected: str) -> None:
    assert engine_dtype(requested, on_cpu=on_cpu, x86=x86, bf16_units=bf16_units) == expected
