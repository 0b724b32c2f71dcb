"""The chart rendered once per values file for the whole package (each render is a `helm`
process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.helm import CHART, render

VALUES_FILES = {
    "default": CHART / "values.yaml",
    "production-gpu": CHART / "values-production-gpu.yaml",
    "evaluation": CHART / "values-evaluation.yaml",
}

Manifests = list[dict[str, Any]]


def values_files(name: str) -> list[Path]:
    """What `-f` a user passes for that install (values.yaml is always read first)."""
    return [] if name == "default" else [VALUES_FILES[name]]


@pytest.fixture(scope="session")
def rendered() -> dict[str, Manifests]:
    """Each values file's manifests: hooks, the test pod and NOTES-free YAML."""
    return {name: render(values_files(name)) for name in VALUES_FILES}


@pytest.fixture(scope="session")
def production(rendered: dict[str, Manifests]) -> Manifests:
    return rendered["production-gpu"]


@pytest.fixture(scope="session")
def evaluation(rendered: dict[str, Manifests]) -> Manifests:
    return rendered["evaluation"]


@pytest.fixture(scope="session")
def default(rendered: dict[str, Manifests]) -> Manifests:
    return rendered["default"]
