"""Peak memory of a step, as the metrics events report it (``peak_memory_gib``).

On a GPU: the most CUDA memory torch held during the step (the counter is reset after each
read, so every step reports its own peak). On a CPU: the process's resident high-water mark so
far (Linux keeps no per-step peak), which still shows a step that grows memory. Rank 0's own
figure: the ranks of one run hold about the same.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

GIB = float(1 << 30)


def step_peak_memory_gib(on_gpu: bool) -> float:
    """The peak since the last call (GPU) or since the process started (CPU), in GiB."""
    if on_gpu and torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / GIB
        torch.cuda.reset_peak_memory_stats()
        return round(peak, 3)
    return round(_resident_peak_kib() * 1024 / GIB, 3)


def _resident_peak_kib() -> int:
    """This process's VmHWM: its own high-water mark. ``ru_maxrss`` would do but for one
    thing: Linux carries it over an exec, so a fresh process reports its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
