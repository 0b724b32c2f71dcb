"""``bench.quality.merge``: runs of the suite on separate tasks make one report, and runs that
would not compare are refused."""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from typing import Any

import pytest

import bench.quality.merge as merge
from bench.quality import run
from bench.quality.report import Cell

SCORES = {"classify": (0.2, 0.8), "rewrite": (0.0, 0.5), "multi_turn": (0.1, 0.9)}


def test_doctests() -> None:
    assert doctest.testmod(merge).failed == 0


def _run(monkeypatch: pytest.MonkeyPatch, out: Path, tasks: str, *extra: str) -> Path:
    """A real ``bench.quality.run`` on ``tasks`` with the API replaced by fixed scores."""
    def fake_api(_client: Any, args: Any, data: Any, cells: Any, record: Any,
                 _work: Any) -> None:
        for name in data:
            base, auto = SCORES[name]
            cells[name]["base"] = Cell(base, 1.0)
            cells[name]["auto"] = Cell(auto, 1.0, 1000, 60.0)

    monkeypatch.setattr(run, "run_api", fake_api)
    monkeypatch.setattr(run, "OpenAI", lambda **k: None)
    assert run.main(["--base-url", "http://127.0.0.1:9/v1", "--api-key", "k", "--no-trl",
                     "--tasks", tasks, "--results-dir", str(out), *extra]) == 0
    return out / "quality.json"


def test_two_runs_make_one_table_with_the_mean_over_all_tasks(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a = _run(monkeypatch, tmp_path / "a", "classify")
    b = _run(monkeypatch, tmp_path / "b", "rewrite,multi_turn")
    assert merge.main([str(a), str(b), "--results-dir", str(tmp_path / "m")]) == 0
    text = (tmp_path / "m" / "quality.md").read_text()
    assert "from 2 runs" in text
    assert "--tasks classify" in text and "--tasks rewrite,multi_turn" in text
    assert "| classify | 0.20 | 0.80 | skipped |" in text
    assert "| multi_turn | 0.10 | 0.90 | skipped |" in text
    assert "| **mean** | 0.10 | 0.73 | - |" in text
    saved = json.loads((tmp_path / "m" / "quality.json").read_text())
    assert saved["settings"]["tasks"] == ["classify", "rewrite", "multi_turn"]


def test_runs_with_other_settings_or_the_same_task_are_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a = _run(monkeypatch, tmp_path / "a", "classify")
    seed = _run(monkeypatch, tmp_path / "s", "rewrite", "--seed", "1")
    again = _run(monkeypatch, tmp_path / "c", "classify")
    with pytest.raises(SystemExit, match="setting 'seed' differs"):
        merge.main([str(a), str(seed), "--results-dir", str(tmp_path / "m")])
    with pytest.raises(SystemExit, match="task 'classify' is in two runs"):
        merge.main([str(a), str(again), "--results-dir", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()
