"""Package boundaries that keep the API small and the packages independent.

The import contracts themselves are in ``tests/test_import_contracts.py``; the layout they
protect is described in docs/architecture.md, "The tree".
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["torch", "transformers", "peft", "deepspeed", "vllm", "ray"]


def test_api_process_starts_without_the_gpu_stack():
    """The API process, and the launcher that runs it under ``make run``, import none of the
    heavy stack."""
    code = (
        "import sys, service.main, devstack.launcher\n"
        "service.main.create_app()\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={"PATH": "/usr/bin:/bin", "OPENFT_API_KEYS": "k=o"})


def imported_roots(package: str) -> set[str]:
    roots = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
    return roots


def test_training_and_serving_never_import_service():
    assert "service" not in imported_roots("training")
    assert "service" not in imported_roots("serving")
