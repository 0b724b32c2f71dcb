"""Adapter copies on a replica's disk go away with the replica, even one that was killed."""

from __future__ import annotations

import os
import subprocess
import sys

from serving.server import LORA_DIR_PREFIX, replica_lora_root


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_new_replica_removes_folders_of_replicas_that_are_gone(tmp_path) -> None:
    killed = tmp_path / f"{LORA_DIR_PREFIX}{_dead_pid()}-abc"
    (killed / "ftkey-1").mkdir(parents=True)
    running = tmp_path / f"{LORA_DIR_PREFIX}{os.getppid()}-def"
    running.mkdir()
    unrelated = tmp_path / "openft-lora-notes"
    unrelated.mkdir()

    mine = replica_lora_root(tmp_path)

    assert not killed.exists()
    assert running.exists() and unrelated.exists()
    assert mine.is_dir() and mine.name.startswith(f"{LORA_DIR_PREFIX}{os.getpid()}-")
