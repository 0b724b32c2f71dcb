"""What every bench records about where it ran: machine, code, package versions.

One place, so the four benches describe their runs the same way and a results file can be
compared with another.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("service", "training", "serving")


def machine() -> str:
    """``Linux x86_64, 2 CPUs (AMD EPYC ...), 24 GiB``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), " \
           f"{memory:.0f} GiB"


def code_version() -> str:
    """The commit the bench ran on, and whether the product's code differed from it."""

    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", *PRODUCT)
    return commit + (" with uncommitted changes to the product" if dirty else "")


def versions(*dists: str) -> dict[str, str]:
    """Installed versions of ``dists``; one that is not installed is left out."""
    found = {}
    for dist in dists:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found
