"""The import contracts of ``pyproject.toml`` (``[tool.importlinter]``) hold, and can fail.

``make test`` runs them here: the roles independent, ``contract/`` importing nothing of the
project, nobody but the dev stack's own users importing ``devstack/``, the API never
importing the GPU stack, no import cycle inside a package. The second test breaks a copy of
the tree on purpose and shows each kind of contract catching it, so a contract that silently
stopped checking (a renamed package, a typo in the config) fails the suite.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "service", "training", "serving", "vllm_cpu", "devstack")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``tree``, with the project's own config."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, text=True,
                          capture_output=True, env={"PATH": "/usr/bin:/bin",
                                                    "PYTHONPATH": str(tree)})


def test_the_tree_keeps_every_import_contract():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"]
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts)} kept, 0 broken." in result.stdout, result.stdout


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """The project's packages (Python files only) and config, to break without harm."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.md"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


BREAKS = [
    ("training/__init__.py", "import service.settings\n",
     "The roles never import each other"),
    ("contract/__init__.py", "import training\n", "contract/ imports nothing of the project"),
    ("serving/__init__.py", "import devstack\n", "Only the dev stack's launcher"),
    ("vllm_cpu/__init__.py", "import serving\n", "vllm_cpu/ is a vLLM plugin"),
    ("service/cli/jobs.py", "import service.settings\n", "service.cli speaks only HTTP"),
    ("service/main.py", "import service.cli.render\n",
     "Nothing of the server imports the command line"),
    ("service/__init__.py", "import torch\n", "The API process never imports the GPU stack"),
    ("contract/bucket.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
     "    import contract.spec\n", "No import cycles inside a package"),
]


@pytest.mark.parametrize(("path", "line", "contract"), BREAKS,
                         ids=[b[2].split(":")[0][:40] for b in BREAKS])
def test_each_contract_fails_when_broken(tree_copy: Path, path: str, line: str,
                                         contract: str):
    target = tree_copy / path
    target.write_text(target.read_text() + "\n" + line)
    result = lint_imports(tree_copy)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout


def test_contract_imports_only_pydantic_and_the_standard_library():
    allowed = set(sys.stdlib_module_names) | {"pydantic", "contract", "__future__"}
    found: dict[str, str] = {}
    for path in (ROOT / "contract").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and node.level == 0 else [])
            for name in names:
                if name.split(".")[0] not in allowed:
                    found[name] = path.name
    assert not found, f"contract/ imports outside pydantic and the standard library: {found}"
