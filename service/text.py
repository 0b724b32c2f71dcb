"""Text a request may hand on to the database, checked where the request is read.

PostgreSQL refuses NUL in text, and UTF-8 cannot encode a lone surrogate (``"\\ud800"`` is
valid JSON): a string holding either would fail in the database, a 500, instead of the 400
that names the field.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def storable(value: str) -> str:
    """``value``, if the database can hold it; ValueError saying why not otherwise.

    >>> storable("ft:tiny-llama:org-a::abc")
    'ft:tiny-llama:org-a::abc'
    >>> storable("a\\x00b")
    Traceback (most recent call last):
    ValueError: NUL (\\u0000) is not allowed in text
    """
    if "\x00" in value:
        raise ValueError("NUL (\\u0000) is not allowed in text")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("a lone surrogate (\\ud800 to \\udfff) is not text") from None
    return value


Text = Annotated[str, AfterValidator(storable)]
"""A request model's string that reaches the database (a name, an id, metadata)."""
