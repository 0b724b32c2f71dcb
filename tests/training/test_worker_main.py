"""The loop function the driver hands Ray Train unpickles without the training libraries: the
driver, which only passes it on, does not import DeepSpeed, PEFT and transformers at every
run's start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("deepspeed", "peft", "transformers")
UNPICKLE = ("import pickle, sys; pickle.loads(sys.stdin.buffer.read()); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")


def unpickled_imports(function: object) -> str:
    import ray.cloudpickle

    done = subprocess.run([sys.executable, "-c", UNPICKLE], cwd=ROOT, capture_output=True,
                          input=ray.cloudpickle.dumps(function), timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode().strip().splitlines()[-1]  # DeepSpeed logs to stdout


def test_the_function_ray_train_gets_unpickles_without_the_training_libraries():
    from training.worker_main import train_loop_per_worker

    assert unpickled_imports(train_loop_per_worker) == "[]"


def test_the_loop_itself_would_import_them():
    """What the indirection avoids, so the test above cannot pass by accident."""
    from training.loop import train_loop_per_worker

    assert unpickled_imports(train_loop_per_worker) == str(sorted(HEAVY))
