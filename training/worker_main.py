"""What each Ray Train worker runs, behind a module that imports nothing heavy.

The driver names this function to ``TorchTrainer``, which pickles it by reference: the driver
imports its module, and each worker imports it again to unpickle it (Ray Train v2's controller
gets it as an object ref and never unpickles it). :mod:`training.loop` brings DeepSpeed, PEFT
and transformers, about 6 s of imports on a cold CPU (``python -X importtime -c "import
training.loop"``), which the driver never uses; naming this function instead spares the
driver them (about 2 s a run measured on a warm page cache). The workers import the loop
when it runs.
"""

from __future__ import annotations

from typing import Any


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from training.loop import train_loop_per_worker as loop

    loop(config)
