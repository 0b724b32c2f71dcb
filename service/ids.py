"""Object ids in OpenAI's shape: a prefix and a random tail."""

from __future__ import annotations

import secrets
import string
import threading
import time

_ALPHABET = string.ascii_letters + string.digits


def random_tail(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def new_id(prefix: str, n: int = 24) -> str:
    return f"{prefix}-{random_tail(n)}"


def now() -> int:
    return int(time.time())


_order_lock = threading.Lock()
_last_order = 0


def created() -> dict[str, int]:
    """A new row's ``created_at`` (whole seconds, as OpenAI shows it) and ``created_seq``
    (:func:`creation_order`), from one reading of the clock so the two always agree."""
    order = creation_order()
    return {"created_at": order // 10**9, "created_seq": order}


def creation_order() -> int:
    """Nanoseconds since the epoch, strictly increasing within this process: the key lists
    sort newest first by. ``created_at`` has whole seconds (OpenAI's objects do), and two
    jobs of the same second would otherwise be ordered by their random ids."""
    global _last_order
    with _order_lock:
        _last_order = max(time.time_ns(), _last_order + 1)
        return _last_order
