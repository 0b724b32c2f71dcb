"""Object ids in OpenAI's shape: a prefix and a random tail."""

from __future__ import annotations

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def random_tail(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def new_id(prefix: str, n: int = 24) -> str:
    return f"{prefix}-{random_tail(n)}"


def now() -> int:
    return int(time.time())
