"""The one place training touches Ray Train's private internals (written for ray 2.60.0).

Ray Train V2 offers no public way to learn when its controller has taken a worker's report;
:func:`wait_until_report_taken` reads the worker's internal result queue for that. Every other
module goes through this one, and ``tests/training/test_private_apis.py`` fails, naming the
version this was written for, when an upgrade moves what it relies on.
"""

from __future__ import annotations

from ray.train.v2._internal.execution.context import get_train_context

WRITTEN_FOR = "2.60.0"
"""The ray version whose internals this module was written against."""


def wait_until_report_taken() -> None:
    """Block until the controller has taken this worker's last ``ray.train.report``.

    The report waits in the worker's result queue until the controller's next poll; Ray marks
    the queue's item done when the poll takes it, so ``join`` waits exactly that long.
    """
    get_train_context().get_result_queue().join()
