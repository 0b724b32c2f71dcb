"""A worker killed while DeepSpeed held its build lock must not stop every later run.

DeepSpeed's CPU comm backend JIT-loads its shared-memory op under a lock file in the torch
extensions folder that all workers on a machine share; a SIGKILLed worker (cancel, pause, a
failed node) can leave that file behind. Here the lock is left exactly as such a worker leaves
it, and a real ZeRO-2 engine must still start and take a step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devstack.processes import free_port
from training.deepspeed_private import SHM_COMM_OP

REPO_ROOT = Path(__file__).resolve().parents[2]

ONE_STEP = r"""
import torch
import torch.distributed as dist

from training.loop import deepspeed_config, initialize_deepspeed

dist.init_process_group("gloo")  # as Ray Train sets it up for the workers
model = torch.nn.Linear(8, 8)
engine = initialize_deepspeed(
    model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
    config=deepspeed_config(zero_stage=2, examples_per_step=1, world_size=1, bf16=False))
loss = engine(torch.ones(1, 8)).square().sum()
engine.backward(loss)
engine.step()
print("STEPPED", flush=True)
"""


def test_engine_starts_despite_a_build_lock_left_by_a_killed_worker(tmp_path: Path) -> None:
    extensions = tmp_path / "torch_extensions"
    (extensions / SHM_COMM_OP).mkdir(parents=True)
    (extensions / SHM_COMM_OP / "lock").touch()  # torch's FileBaton, never released
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(extensions), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")

    # Waiting on the lock never ends: the timeout is the failure.
    run = subprocess.run([sys.executable, "-c", ONE_STEP], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=240)

    assert run.returncode == 0, run.stderr[-3000:]
    assert "STEPPED" in run.stdout
    assert not list(extensions.rglob("*.so"))  # nothing was compiled either
