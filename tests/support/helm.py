"""Render the Helm chart (helm/openft) from tests: ``render`` returns the parsed manifests.

No cluster is involved: ``helm template`` renders offline (``lookup`` finds nothing, so the
chart's generated Secrets get fresh random values on every render).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "openft"
FALLBACK_HELM = Path("/tmp/helmget/helm")


def helm_binary() -> Path:
    """``.venv/bin/helm`` (``make setup`` puts it there), else the one fetched by hand."""
    for candidate in (ROOT / ".venv" / "bin" / "helm", FALLBACK_HELM):
        if candidate.is_file():
            return candidate
    found = shutil.which("helm")
    if found is None:
        raise FileNotFoundError("no helm: run `make setup` (python -m devstack.helm_binary)")
    return Path(found)


def _set_args(set_values: dict[str, Any] | None) -> list[str]:
    """``--set-string`` for strings (so "0.1" stays a string), ``--set-json`` for the rest."""
    args: list[str] = []
    for key, value in (set_values or {}).items():
        if isinstance(value, str):
            args += ["--set-string", f"{key}={value}"]
        else:
            args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def _template(values_files: list[Path], set_values: dict[str, Any] | None, release: str,
              namespace: str, extra: list[str]) -> subprocess.CompletedProcess[str]:
    argv = [str(helm_binary()), "template", release, str(CHART), "--namespace", namespace]
    for path in values_files:
        argv += ["--values", str(path)]
    return subprocess.run(argv + _set_args(set_values) + extra, capture_output=True, text=True,
                          check=False, timeout=120)


def render_text(values_files: list[Path], set_values: dict[str, Any] | None = None,
                release: str = "rel", namespace: str = "openft",
                extra: list[str] | None = None) -> str:
    """The rendered YAML stream; raises with helm's stderr if the render fails."""
    out = _template(values_files, set_values, release, namespace, extra or [])
    if out.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{out.stderr}")
    return out.stdout


def render(values_files: list[Path], set_values: dict[str, Any] | None = None,
           release: str = "rel", namespace: str = "openft") -> list[dict[str, Any]]:
    """The rendered manifests, parsed, hooks and test pods included (empty documents skipped)."""
    text = render_text(values_files, set_values, release, namespace)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_error(values_files: list[Path], set_values: dict[str, Any] | None = None,
                 release: str = "rel", namespace: str = "openft") -> str:
    """helm's stderr for a render that must fail; raises if it renders."""
    out = _template(values_files, set_values, release, namespace, [])
    if out.returncode == 0:
        raise AssertionError("helm template rendered, but was expected to fail")
    return out.stderr
