"""Exact and near duplicate conversations, within a file and between two files.

Exact: a 64-bit BLAKE2 hash of the normalized conversation (:func:`normalized`), kept in two
arrays of 8 and 4 bytes a row, so a file of millions of rows is indexed in tens of MB; the
groups come out of one sort at the end. Near: MinHash signatures of word 3-grams in a
MinHash LSH index (``datasketch``), Jaccard similarity estimated at
:data:`NEAR_THRESHOLD` or more; the index holds the first :data:`NEAR_ROWS` rows of a file
(an LSH entry costs a few kB).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from datasketch import MinHash, MinHashLSH

NEAR_THRESHOLD = 0.8
NUM_PERM = 128
NEAR_ROWS = 20_000
"""Rows of a file indexed for near duplicates; later rows are still checked for exact ones."""
_WORD = re.compile(r"\w+")
MAX_PAIRS = 1000
"""Near pairs (and exact groups, and leaked rows) listed at most."""


def normalized(conversation: Mapping[str, Any]) -> str:
    """The conversation as compared: each message's role, text with runs of whitespace made
    one space, and tool calls; the tool definitions. Case and punctuation count.

    >>> a = {"messages": [{"role": "user", "content": " Hi  there\\n"}]}
    >>> normalized(a) == normalized({"messages": [{"role": "user", "content": "Hi there"}]})
    True
    """
    def message(m: Mapping[str, Any]) -> list[Any]:
        content = m.get("content")
        text = " ".join(content.split()) if isinstance(content, str) else content
        return [m.get("role"), text, m.get("tool_calls"), m.get("name"), m.get("weight", 1)]

    return json.dumps([[message(m) for m in conversation["messages"]],
                       conversation.get("tools")], sort_keys=True, ensure_ascii=False)


def exact_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def minhash(text: str) -> MinHash:
    """Signature of the casefolded text's word 3-grams (its words, when fewer than three);
    words are runs of letters and digits, so JSON punctuation and spacing do not count."""
    words = _WORD.findall(text.casefold())
    grams = {" ".join(words[i:i + 3]) for i in range(max(1, len(words) - 2))}
    from datasketch import MinHash  # imports scipy: half a second the API's start never pays

    template = _template()
    m = MinHash(num_perm=NUM_PERM, permutations=template.permutations, scheme=template.scheme)
    m.update_batch([g.encode() for g in grams])
    return m


@dataclass
class Index:
    """The rows of one file, for duplicates within it and for leakage from another file."""

    hashes: array = field(default_factory=lambda: array("Q"))
    lines: array = field(default_factory=lambda: array("I"))
    lsh: MinHashLSH = field(default_factory=lambda: _lsh())
    signatures: dict[int, tuple[MinHash, int]] = field(default_factory=dict)
    """Signature and exact hash of each line in the LSH index."""
    near: list[tuple[int, int, float]] = field(default_factory=list)
    """``(earlier line, line, similarity)`` of near duplicates that are not exact ones."""

    def add(self, line: int, text: str) -> None:
        digest = exact_hash(text)
        self.hashes.append(digest)
        self.lines.append(line)
        if len(self.signatures) >= NEAR_ROWS:
            return
        signature = minhash(text)
        for other, similarity in self.similar(signature):
            if len(self.near) < MAX_PAIRS and self.signatures[other][1] != digest:
                self.near.append((other, line, similarity))
        self.lsh.insert(line, signature)
        self.signatures[line] = (signature, digest)

    def similar(self, signature: MinHash) -> list[tuple[int, float]]:
        """Indexed lines whose estimated similarity to ``signature`` is at least the
        threshold, in line order."""
        found = []
        for other in sorted(self.lsh.query(signature)):
            similarity = signature.jaccard(self.signatures[other][0])
            if similarity >= NEAR_THRESHOLD:
                found.append((other, round(similarity, 2)))
        return found

    def exact_groups(self) -> list[list[int]]:
        """Lines of each group of identical rows (two or more), in order of first line."""
        hashes = np.frombuffer(self.hashes, dtype=np.uint64)
        lines = np.frombuffer(self.lines, dtype=np.uint32)
        order = np.lexsort((lines, hashes))
        sorted_hashes = hashes[order]
        groups: list[list[int]] = []
        starts = np.flatnonzero(np.r_[True, sorted_hashes[1:] != sorted_hashes[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts, ends, strict=True):
            if end - start > 1:
                groups.append(sorted(int(x) for x in lines[order[start:end]]))
        groups.sort()
        return groups[:MAX_PAIRS]


@functools.cache
def _template() -> MinHash:
    """A signature whose hash permutations (datasketch's own, seed 1) every row's reuses:
    drawn once rather than per row."""
    from datasketch import MinHash

    return MinHash(num_perm=NUM_PERM)


def _lsh() -> MinHashLSH:
    from datasketch import MinHashLSH  # as in minhash()

    return MinHashLSH(threshold=NEAR_THRESHOLD, num_perm=NUM_PERM)


@dataclass(frozen=True)
class Leak:
    line: int
    training_lines: list[int]
    kind: str
    """``exact`` or ``near``."""


class LeakCheck:
    """Finds validation rows in the training file's finished index. Its hashes are sorted
    once, with their lines in the same order, so each row costs a binary search (and, when
    not found exactly, one MinHash query)."""

    def __init__(self, training: Index) -> None:
        hashes = np.frombuffer(training.hashes, dtype=np.uint64)
        order = np.argsort(hashes, kind="stable")  # stable: equal hashes keep line order
        self._hashes = hashes[order]
        self._lines = np.frombuffer(training.lines, dtype=np.uint32)[order]
        self._training = training

    def __call__(self, line: int, text: str) -> Leak | None:
        """The leak of validation row ``line`` (its normalized ``text``), if it is one."""
        digest = np.uint64(exact_hash(text))
        start = int(np.searchsorted(self._hashes, digest, side="left"))
        end = int(np.searchsorted(self._hashes, digest, side="right"))
        if end > start:
            return Leak(line, [int(x) for x in self._lines[start:end]], "exact")
        similar = self._training.similar(minhash(text))
        return Leak(line, [other for other, _ in similar], "near") if similar else None

