"""vllm_cpu.amx: vLLM's CPU attention runs on a CPU with AMX (it died of SIGILL there)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.lora import REPO_ROOT

pytestmark = pytest.mark.slow

GENERATE = r'''
import sys

if __name__ == "__main__":
    from vllm import LLM, SamplingParams

    llm = LLM(model=sys.argv[1], dtype="bfloat16", max_model_len=256, block_size=32,
              kv_cache_memory_bytes=256 * 2**20, enforce_eager=True, seed=0)
    out = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                       use_tqdm=False)
    print("TOKENS", len(out[0].outputs[0].token_ids))
'''


def test_a_bf16_engine_generates_with_only_the_amx_plugin(tmp_path: Path,
                                                          tiny_model_dir: Path) -> None:
    """bf16, as the default base model (and any model with ``dtype: auto``, which vLLM's CPU
    platform runs in bf16) is served. On an AMX CPU (Sapphire Rapids and later) the engine's
    first forward died with "Fatal Python error: Illegal instruction" in
    ``cpu_attention_with_kv_cache`` (its "amx" path) before the plugin; elsewhere the plugin
    does nothing and the engine generates all the same."""
    script = tmp_path / "generate.py"
    script.write_text(GENERATE)
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_PLUGINS="openft_cpu_amx",
               PYTHONFAULTHANDLER="1")
    run = subprocess.run([sys.executable, str(script), str(tiny_model_dir)], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=600)

    assert run.returncode == 0, run.stderr[-4000:]
    assert "TOKENS 8" in run.stdout
