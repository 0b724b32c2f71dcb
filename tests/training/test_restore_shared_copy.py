"""Two ranks on one machine restoring the checkpoint Ray Train hands them after a restart.

Ray's ``Checkpoint.as_directory`` gives every process on a machine one shared download of the
checkpoint (same checkpoint, same temp folder) and lets the last reader to leave delete it.
Rank 0 arrives late (it announces the restart first): a rank that has already left may be
deleting the copy just then, and rank 0's ``to_directory`` fails with "does not exist, even
though it should have been created by another process". In a CI run that failure restarted
the restarted run once more, and the user read "Training restarted" twice for one lost node.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow.fs
import torch
from ray.train import Checkpoint

from devstack.processes import free_port
from training.data import StepPlan
from training.trainer_state import STATE_FILE, TrainerState, run_shape

REPO_ROOT = Path(__file__).resolve().parents[2]
PLAN = StepPlan(examples_per_rank_step=2, examples_per_rank_epoch=6, n_epochs=2)

RESTORE = """
import os, pickle, shutil, sys, time
from pathlib import Path

import torch.distributed as dist

from training.checkpoints import restore
from training.data import StepPlan

rank = int(os.environ["RANK"])
dist.init_process_group("gloo")  # as Ray Train sets it up for the workers
checkpoint = pickle.loads(Path(sys.argv[1]).read_bytes())
if rank == 0:
    LATE = 1.0  # rank 0 writes the restart event before it restores
else:
    LATE, delete = 0.0, shutil.rmtree

    def rmtree(path, *args, **kwargs):  # the last reader to leave deletes the copy, slowly
        time.sleep(2.0)
        delete(path, *args, **kwargs)

    shutil.rmtree = rmtree


class Engine:
    def load_checkpoint(self, folder, tag, load_module_strict):
        return (folder if (Path(folder) / tag).is_dir() else None), {}


dist.barrier()
time.sleep(LATE)
state = restore(Engine(), checkpoint, StepPlan(2, 6, 2), rank, 2)
print("RESTORED", rank, state.step, flush=True)
"""


def test_a_late_rank_restores_from_the_copy_an_early_rank_shares(tmp_path: Path) -> None:
    stored = tmp_path / "bucket" / "step-00000003"
    (stored / "deepspeed").mkdir(parents=True)
    (stored / "deepspeed" / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    (stored / "rng").mkdir()
    for rank in (0, 1):
        torch.save({"cpu": torch.get_rng_state()}, stored / "rng" / f"rank-{rank}.pt")
    (stored / STATE_FILE).write_text(TrainerState(3, None, run_shape(PLAN, 2)).to_json())
    # Not a LocalFileSystem, so Ray downloads it as from S3; pickled, as Ray Train hands one
    # checkpoint (one id, one temp folder) to every rank.
    bucket = pyarrow.fs.SubTreeFileSystem(str(tmp_path / "bucket"), pyarrow.fs.LocalFileSystem())
    handed = tmp_path / "checkpoint.pkl"
    handed.write_bytes(pickle.dumps(Checkpoint("step-00000003", filesystem=bucket)))
    node_tmp = tmp_path / "tmp"  # one machine's temp dir, shared by both ranks
    node_tmp.mkdir()

    env = dict(os.environ, TMPDIR=str(node_tmp), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    ranks = [subprocess.Popen([sys.executable, "-c", RESTORE, str(handed)], cwd=REPO_ROOT,
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [p.communicate(timeout=120)[0] for p in ranks]

    for rank, (p, out) in enumerate(zip(ranks, outputs, strict=True)):
        assert p.returncode == 0 and f"RESTORED {rank} 3" in out, out[-3000:]
    assert not list(node_tmp.glob("checkpoint_tmp_*")), "the last reader deletes the copy"
