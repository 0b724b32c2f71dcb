"""``make setup``'s accelerator guard: a venv whose torch build does not match ACCEL is refused.

Why it matters: this kind of machine keeps a CPU build of torch among pip's local wheels, and
it satisfies ``torch==2.13.0`` just as PyPI's CUDA build does; a CUDA vLLM installed on it
fails only when serving starts. ``make setup ACCEL=cuda`` keeps pip away from local wheels
and then checks what it got.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120)


def test_the_cpu_venv_passes_the_accelerator_check_and_a_cuda_one_would_not():
    assert make("check-accel", "ACCEL=cpu").returncode == 0
    refused = make("check-accel", "ACCEL=cuda")
    assert refused.returncode != 0
    assert "does not match ACCEL=cuda" in refused.stderr + refused.stdout


def test_a_cuda_setup_installs_without_the_local_wheels():
    plan = make("-n", "-W", "pyproject.toml", "setup", "ACCEL=cuda").stdout
    installs = [line for line in plan.splitlines() if " install " in line and "-e " in line
                or "torch==" in line]
    assert installs, plan
    for line in installs:
        assert "PIP_CONFIG_FILE=/dev/null" in line and "-u PIP_FIND_LINKS" in line, line
        assert "--no-cache-dir" in line, line
    assert "check-accel" in plan
