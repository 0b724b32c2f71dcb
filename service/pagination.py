"""OpenAI's list envelope and cursor pagination (``after`` = id of the last item seen)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Query
from pydantic import BaseModel, BeforeValidator

T = TypeVar("T")


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


_DIGITS = re.compile(r"[0-9]{1,9}")


def digits_only(value: Any) -> Any:
    """A count in a query string as people write one: ASCII digits. Python's ``int()``, which
    validation would use, also takes ``1_0``, `` 1`` and ``١``: each a 400 instead.

    >>> digits_only("20")
    '20'
    >>> digits_only("1_0")
    Traceback (most recent call last):
    ValueError: must be a whole number written in digits (0-9)
    """
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError("must be a whole number written in digits (0-9)")
    return value


def limit_query(most: int) -> Any:
    """The ``limit`` query parameter of a list: 1 to ``most``, digits only."""
    return Annotated[int, BeforeValidator(digits_only), Query(ge=1, le=most)]


def page(items: list[Any], limit: int) -> ListPage[Any]:
    """``items`` was fetched with ``limit + 1`` rows, so one extra row means ``has_more``."""
    data = items[:limit]
    return ListPage(
        data=data,
        has_more=len(items) > limit,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
