"""What the driver tells the user when a run fails for a reason that is not theirs."""

from __future__ import annotations

import pytest

from training.driver import summary


class WrappedTaskError(Exception):
    """Shaped like Ray's remote task error: the original exception is ``cause``."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"ray::worker failed\nTraceback ...\n{cause}")
        self.cause = cause


class WorkerGroupError(Exception):
    def __init__(self, worker_failures: dict[int, Exception]) -> None:
        super().__init__("Training failed due to worker errors:\n...")
        self.worker_failures = worker_failures


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RuntimeError("boom\nmore lines"), "Training failed: RuntimeError: boom"),
        (
            WorkerGroupError(
                {1: WrappedTaskError(ValueError("rank 1")), 0: WrappedTaskError(OSError("gone"))}
            ),
            "Training failed: OSError: gone",
        ),
        (RuntimeError(""), "Training failed: RuntimeError: "),
        (RuntimeError("x" * 1000), "Training failed: RuntimeError: " + "x" * 469),
    ],
)
def test_summary_names_the_root_cause_in_one_line(error, expected):
    assert summary(error) == expected
