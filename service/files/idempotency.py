"""``Idempotency-Key`` on ``POST /v1/files``: a retried upload returns the first file.

A client that lost the answer to an upload (a timeout, a dropped connection) retries with
the same key and gets the file object it missed, not a second copy of the bytes. Keys are
per organization and last :data:`WINDOW_S`; a key whose file has since been deleted counts
as unused, since replaying an id that answers 404 helps no one.
"""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db import FileIdempotencyRow, FileRow
from service.errors import InvalidRequest

HEADER = "Idempotency-Key"
WINDOW_S = 24 * 3600
"""How long a key is remembered (OpenAI's and Stripe's 24 hours)."""
MAX_KEY_LENGTH = 255


def check_key(key: str) -> str:
    """The key as stored; a 400 for one the column cannot hold.

    >>> check_key("retry-7f3c")
    'retry-7f3c'
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(
            f"The {HEADER} header must be 1 to {MAX_KEY_LENGTH} characters long.",
            param=HEADER, code="invalid_value")
    return key


def replay(session: Session, organization: str, key: str, now: int) -> FileRow | None:
    """The file a live key created; None when the key is new, expired or its file gone
    (an expired or dangling key is dropped here, so :func:`claim` can take it again)."""
    seen = session.get(FileIdempotencyRow, (organization, key))
    if seen is None:
        return None
    file = session.get(FileRow, seen.file_id)
    if file is not None and seen.created_at > now - WINDOW_S:
        return file
    session.delete(seen)
    session.flush()
    return None


def claim(session: Session, organization: str, key: str, file_id: str,
          now: int) -> FileRow | None:
    """Record that ``key`` created ``file_id``. When a concurrent request with the same key
    got there first, roll this unit of work back and return that request's file instead.

    Run before anything else is added to the session: the rollback discards it too.
    """
    session.add(FileIdempotencyRow(organization=organization, key=key, file_id=file_id,
                                   created_at=now))
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        winner = session.get(FileIdempotencyRow, (organization, key))
        return session.get(FileRow, winner.file_id) if winner else None
    return None


def forget_expired(session: Session, now: int) -> int:
    """Drop keys past the window (the sweeper's housekeeping); how many went."""
    result = session.execute(
        delete(FileIdempotencyRow).where(FileIdempotencyRow.created_at <= now - WINDOW_S))
    return int(getattr(result, "rowcount", 0) or 0)
