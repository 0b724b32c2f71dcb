"""Running one step of the suite in a child process that reads a JSON config and writes JSON.

torch, transformers and TRL are imported only in such a child, and only when it runs, so the
runner stays light and each child's torch threads are its own (``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.environment import REPO


def run_child(module: str, config: dict[str, Any], work: Path, *, threads: int,
              timeout: float, what: str) -> dict[str, Any]:
    """``python -m module work/config.json``; what it wrote to ``config["out"]``. Raises with
    the log tail when it fails, and kills it after ``timeout`` seconds."""
    work.mkdir(parents=True, exist_ok=True)
    config = {**config, "threads": threads, "out": str(work / "out.json")}
    (work / "config.json").write_text(json.dumps(config))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    log = work / "child.log"
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-m", module, str(work / "config.json")],
                                 cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise RuntimeError(f"{what} still running after {timeout:.0f}s (killed)") from None
    if code != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{what} exited with {code}:\n{tail}")
    result: dict[str, Any] = json.loads((work / "out.json").read_text())
    return result
