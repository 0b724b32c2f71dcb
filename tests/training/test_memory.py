"""``peak_memory_gib`` in every metrics event: a step that grows memory shows it."""

from __future__ import annotations

import json
import subprocess
import sys

from training.memory import step_peak_memory_gib

# In a fresh process: the test session's own high-water mark could hide the growth.
GROWING_STEP = """
import json, torch
from training.memory import step_peak_memory_gib
before = step_peak_memory_gib(on_gpu=False)
grown = torch.ones(96, 1024, 1024)  # 384 MiB, touched
print(json.dumps([before, step_peak_memory_gib(on_gpu=False)]))
"""


def test_a_step_that_allocates_more_reports_a_higher_peak_on_cpu():
    out = subprocess.run([sys.executable, "-c", GROWING_STEP], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    before, after = json.loads(out.strip().splitlines()[-1])
    assert before > 0
    assert after >= before + 0.3


def test_without_cuda_the_gpu_figure_falls_back_to_the_process_peak():
    assert step_peak_memory_gib(on_gpu=True) == step_peak_memory_gib(on_gpu=False)
