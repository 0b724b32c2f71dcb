"""What each Ray Train worker runs, behind a module that imports nothing heavy.

``TorchTrainer`` pickles its loop function by reference, so every process that unpickles it
imports the function's module: the driver, Ray Train's controller actor, and each worker.
:mod:`training.loop` brings DeepSpeed, PEFT and transformers, about 6 s of imports on a CPU
(``python -X importtime -c "import training.loop"``), which only the workers use. Naming this
function instead lets the driver and the controller skip them, so every run's workers start
that much sooner; the workers import the loop when it runs.
"""

from __future__ import annotations

from typing import Any


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from training.loop import train_loop_per_worker as loop

    loop(config)
