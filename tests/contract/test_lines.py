"""contract.lines.split_lines: the lines of a chunked stream, linear time, each capped; and
the chat reader streaming over it (contract.chat_format.iter_numbered_examples)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest

from contract.chat_format import (
    MIN_EXAMPLES,
    InvalidChatFile,
    iter_numbered_examples,
    read_numbered_examples,
)
from contract.lines import LineTooLong, split_lines


def pieces(data: bytes, *cuts: int) -> list[bytes]:
    """``data`` cut at the given offsets."""
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@pytest.mark.parametrize(("chunks", "lines"), [
    ([b"a\nbb\nccc\n"], [b"a", b"bb", b"ccc"]),
    ([b"a\nbb\nccc"], [b"a", b"bb", b"ccc"]),  # last line without a newline
    (pieces(b"first\nsecond\n", 3, 8), [b"first", b"second"]),  # lines across chunks
    (pieces(b"one line across four chunks\n", 4, 9, 20), [b"one line across four chunks"]),
    ([b"a\r\nb\r\n"], [b"a", b"b"]),  # CRLF
    ([b"a\r", b"\nb\r", b"\n"], [b"a", b"b"]),  # CRLF split between chunks: one ending
    ([b"a\r", b"\n", b"\nb"], [b"a", b"", b"b"]),  # the LF of the CRLF is a chunk alone
    ([b"a\rb\r\rc"], [b"a", b"b", b"", b"c"]),  # a lone CR ends a line, as splitlines says
    ([b"a\n\n\nb\n"], [b"a", b"", b"", b"b"]),  # blank lines kept: they are numbered
    ([b"", b"a", b"", b"\n", b""], [b"a"]),  # empty chunks
    ([], []),
    ([b"\n"], [b""]),
    ([b"caf\xc3", b"\xa9\n"], ["café".encode()]),  # a character split between chunks
])
def test_lines_are_those_of_the_whole(chunks: list[bytes], lines: list[bytes]):
    assert list(split_lines(chunks, 100)) == lines
    assert lines == b"".join(chunks).splitlines()


def test_any_chunking_gives_the_lines_of_splitlines():
    rng = random.Random(16)
    alphabet = [b"x", b"y", b"{", b"\n", b"\r", b"\r\n", b" "]
    for _ in range(300):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        cuts = sorted(rng.sample(range(len(data) + 1), k=min(len(data), rng.randrange(0, 6))))
        assert list(split_lines(pieces(data, *cuts), 1000)) == data.splitlines(), (data, cuts)


@pytest.mark.parametrize(("chunks", "line"), [
    ([b"ok\n", b"0123456789\n", b"ok\n"], 2),
    ([b"ok\nok\n01234", b"56789"], 3),  # a last line without a newline
    (pieces(b"ok\r\n0123456789abcdef\r\n", 4, 9, 12), 2),  # too long across chunks
    ([b"0123456789\r\n"], 1),
])
def test_a_line_over_the_cap_is_refused_naming_it(chunks: list[bytes], line: int):
    with pytest.raises(LineTooLong) as caught:
        list(split_lines(chunks, 9))
    assert caught.value.line == line and caught.value.limit == 9
    assert f"Line {line} " in str(caught.value)


def test_a_line_at_the_cap_passes():
    assert list(split_lines([b"123456789\r\n", b"12345", b"6789"], 9)) == [b"123456789"] * 2


def test_a_long_line_is_refused_before_the_rest_is_read():
    """A 1 GB line fails once the cap is passed, without waiting for its end."""
    read = 0

    def endless() -> Iterator[bytes]:
        nonlocal read
        yield b"ok\n"
        while True:
            read += 1
            yield b"x" * 1024

    with pytest.raises(LineTooLong) as caught:
        list(split_lines(endless(), 10 * 1024))
    assert caught.value.line == 2 and read == 11


def test_lines_come_as_chunks_arrive():
    """One line is held at a time: the first line is out before the second chunk is read."""
    read = []

    def chunks() -> Iterator[bytes]:
        for chunk in (b"a\nb", b"\nc\n"):
            read.append(chunk)
            yield chunk

    lines = split_lines(chunks(), 10)
    assert next(lines) == b"a" and read == [b"a\nb"]


def chat(i: int) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                    {"role": "assistant", "content": f"a{i}"}]}).encode()


def test_the_chat_reader_names_the_line_too_long():
    data = b"\n".join([chat(0), chat(1), b'{"messages": "' + b"x" * 200 + b'"}', chat(3)])
    with pytest.raises(InvalidChatFile) as caught:
        read_numbered_examples(split_lines(pieces(data, 50, 100, 150), 128))
    assert caught.value.line == 3 and caught.value.code == "invalid_training_file"
    assert str(caught.value).startswith("Line 3 is longer than 128 bytes")


def test_the_chat_reader_streams_and_counts_at_the_end():
    """Examples come one by one; too few is only known, and raised, after the last one."""
    lines = [chat(0), b"", chat(2)]
    examples = iter_numbered_examples(iter(lines))
    assert next(examples)[0] == 1 and next(examples)[0] == 3
    with pytest.raises(InvalidChatFile) as caught:
        next(examples)
    assert caught.value.code == "invalid_n_examples" and "has 2 example(s)" in str(caught.value)
    assert len(read_numbered_examples([chat(i) for i in range(MIN_EXAMPLES)])) == MIN_EXAMPLES


def test_a_bad_line_crosses_a_process_boundary_whole():
    """Raised in a Ray worker, the error is pickled back to the driver: the line, the reason
    and the code arrive, not a failure to rebuild it."""
    import pickle

    with pytest.raises(InvalidChatFile) as caught:
        read_numbered_examples([chat(0), b"{not json", chat(2)])
    back = pickle.loads(pickle.dumps(caught.value))
    assert (back.line, back.reason, back.code, str(back)) == (
        2, caught.value.reason, "invalid_training_file", str(caught.value))
    assert str(back).startswith("Line 2 is not valid JSON")
