"""OpenAI's list envelope and cursor pagination (``after`` = id of the last item seen)."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


def page(items: list[Any], limit: int) -> ListPage[Any]:
    """``items`` was fetched with ``limit + 1`` rows, so one extra row means ``has_more``."""
    data = items[:limit]
    return ListPage(
        data=data,
        has_more=len(items) > limit,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
