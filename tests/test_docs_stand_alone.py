"""The repository documents itself: no file points at a path outside the checkout.

A newcomer has a clone and nothing else; a reference to a sibling folder of the checkout
or to a design note that is not in the tree is a dead end for them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDORED = ("tests/service/spec_openai/",)
"""OpenAI's own spec extracts, kept verbatim (their relative links are OpenAI's site's)."""
RELATIVE = re.compile(r"(?<![\w./])(\.\./[\w./-]+)")
OUTSIDE_NOTES = ("DESIGN.md", "STACK-NOTES", "STYLE.md")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True,
                           text=True).stdout.split()
    files = []
    for name in names:
        path = ROOT / name
        if name.startswith(VENDORED) or not path.is_file() or path == Path(__file__).resolve():
            continue
        if path.suffix in {".py", ".md", ".toml", ".yaml", ".yml", ".tpl", ".txt", ".cfg"} \
                or path.name in {"Makefile", "Dockerfile", "run"}:
            files.append(path)
    return files


def test_no_file_points_outside_the_repository():
    found = []
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        for n, line in enumerate(text.splitlines(), start=1):
            for ref in RELATIVE.findall(line):
                if not (path.parent / ref).resolve().is_relative_to(ROOT):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {ref}")
            found += [f"{path.relative_to(ROOT)}:{n}: {note}" for note in OUTSIDE_NOTES
                      if note in line and not (ROOT / note).exists()]
    assert not found, "references outside the repository:\n" + "\n".join(found)
