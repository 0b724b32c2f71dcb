"""Requests the API makes to a running job: today only pause, through ``control.json``.

The API writes ``{"action": "pause"}`` to ``jobs/{job_id}/control.json``. Rank 0 reads it
between optimizer steps, at most once per second (one small GET, a few ms); every rank then
learns rank 0's answer in one all-reduce, so all of them checkpoint the same step and stop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from botocore.exceptions import ClientError

from contract.bucket import control_key

log = logging.getLogger("training.control")

Read = Callable[[], bytes | None]
"""The control object's body, or ``None`` when there is none."""


def wants_pause(body: bytes | None) -> bool:
    """Whether a control object asks for a pause; anything unreadable asks for nothing.

    >>> wants_pause(b'{"action": "pause"}'), wants_pause(None), wants_pause(b"{oops")
    (True, False, False)
    """
    if body is None:
        return False
    try:
        request = json.loads(body)
    except ValueError:
        log.warning("ignoring a control object that is not JSON: %r", body[:200])
        return False
    return isinstance(request, dict) and request.get("action") == "pause"


class PauseWatch:
    """Rank 0's view of the control object, read at most once per ``interval_s``.

    A pause, once seen, stays requested: the run is going to stop. A failed read counts as
    no request (the next read retries); losing a step of latency beats failing the run.
    """

    def __init__(
        self, read: Read, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._read = read
        self._interval = interval_s
        self._clock = clock
        self._last_read = float("-inf")
        self._requested = False

    def requested(self) -> bool:
        if self._requested or self._clock() - self._last_read < self._interval:
            return self._requested
        self._last_read = self._clock()
        try:
            self._requested = wants_pause(self._read())
        except Exception:  # noqa: BLE001 - S3 briefly away: train on, read again later
            log.warning("could not read the control object", exc_info=True)
        return self._requested


def s3_control_reader(s3: Any, bucket: str, job_id: str) -> Read:
    key = control_key(job_id)

    def read() -> bytes | None:
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    return read


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any; every rank must call it."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
