"""Lines of a byte stream that arrives in chunks, in time linear in its size, each capped.

botocore's ``StreamingBody.iter_lines`` joins what it holds with each new chunk and splits
the whole again, so one long line costs time quadratic in its length (a 20 MB line took
minutes to read, and the scheduler waited with it). Here each chunk is split once, the pieces
of an unfinished line are kept in a list and joined once, and a line is refused as soon as it
grows past the cap, before the rest of it is read.

Lines end where :meth:`bytes.splitlines` ends them (``\\n``, ``\\r\\n`` or a lone ``\\r``), so
line numbers agree with the training side, which splits the whole file that way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class LineTooLong(ValueError):
    """Line ``line`` (1-based) is longer than ``limit`` bytes, line ending excluded."""

    def __init__(self, line: int, limit: int):
        self.line = line
        self.limit = limit
        super().__init__(f"Line {line} is longer than {limit} bytes.")


def split_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[bytes]:
    """The lines of the concatenated ``chunks``, without their line endings.

    Raises :class:`LineTooLong` naming the line as soon as one passes ``max_line_bytes``.
    A line break may fall anywhere, ``\\r\\n`` split across two chunks included:

    >>> list(split_lines([b'{"a": 1}\\r', b'\\n{"b"', b': 2}\\n\\nlast'], 100))
    [b'{"a": 1}', b'{"b": 2}', b'', b'last']
    >>> list(split_lines([b"ok\\n", b"much too long\\n"], 8))
    Traceback (most recent call last):
    ...
    contract.lines.LineTooLong: Line 2 is longer than 8 bytes.
    """
    pending: list[bytes] = []  # pieces of the line not yet ended
    size = 0
    line = 1
    after_cr = False  # the last chunk ended in "\r": a "\n" opening this one ends nothing
    for chunk in chunks:
        if after_cr and chunk.startswith(b"\n"):
            chunk, after_cr = chunk[1:], False
        if not chunk:
            continue
        after_cr = chunk.endswith(b"\r")
        for piece in chunk.splitlines(keepends=True):
            text = piece.rstrip(b"\r\n")  # splitlines leaves one ending at most per piece
            size += len(text)
            if size > max_line_bytes:
                raise LineTooLong(line, max_line_bytes)
            if len(text) == len(piece):  # no ending: the line goes on in the next chunk
                pending.append(text)
                continue
            yield b"".join((*pending, text)) if pending else text
            pending.clear()
            size = 0
            line += 1
    if pending:
        yield b"".join(pending)
