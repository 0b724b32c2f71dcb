"""Likely personal data and secrets in text, found offline, each shown masked.

Each detector is a pattern for candidates plus a check that most false hits fail: card
numbers pass the Luhn checksum, IBANs the ISO 13616 mod-97 check, IP addresses the stdlib
``ipaddress`` parser, phone numbers Google's libphonenumber rules (the ``phonenumbers``
package: numbers in international form, or valid in :data:`PHONE_REGION`). API keys are known
vendor prefixes with enough key material after them; private keys their PEM armour.
Excerpts never hold the whole value: at most a few characters at its ends.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import phonenumbers

Kind = Literal["email", "phone", "card", "iban", "ip_address", "api_key", "private_key"]

PHONE_REGION = "US"
"""Numbers written without a country code are read as this region's (``+`` numbers as their
own)."""


@dataclass(frozen=True)
class Finding:
    kind: Kind
    excerpt: str


_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_API_KEY = re.compile(
    r"(?<![\w-])(?:"
    r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r")")
_PHONE_HINT = re.compile(r"(?:\d[\s().-]{0,3}){7}")
"""Seven digits close together: only text with some is handed to libphonenumber's matcher,
which is slow next to a regular expression."""
_PRIVATE_KEY = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY( BLOCK)?-----")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of card numbers.

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: the country and check digits moved to the end, letters as 10..35, the
    number mod 97 is 1.

    >>> iban_valid("GB82WEST12345698765432"), iban_valid("GB82WEST12345698765433")
    (True, False)
    """
    text = iban.replace(" ", "").upper()
    if not 15 <= len(text) <= 34 or not text.isalnum():
        return False
    moved = text[4:] + text[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _mask_middle(value: str, head: int, tail: int) -> str:
    """``value`` with all but ``head`` leading and ``tail`` trailing characters starred,
    at least half of it hidden.

    >>> _mask_middle("4111111111111111", 0, 4)
    '************1111'
    """
    keep = len(value) // 2
    head, tail = min(head, keep), min(tail, max(0, keep - min(head, keep)))
    return value[:head] + "*" * (len(value) - head - tail) + (value[-tail:] if tail else "")


def _emails(text: str) -> Iterator[str]:
    for m in _EMAIL.finditer(text):
        local, domain = m.group().split("@", 1)
        yield f"{local[0]}***@{domain}"


def _phones(text: str) -> Iterator[str]:
    if not _PHONE_HINT.search(text):
        return
    for match in phonenumbers.PhoneNumberMatcher(text, PHONE_REGION):
        digits = re.sub(r"\D", "", match.raw_string)
        yield ("+" if match.raw_string.startswith("+") else "") + _mask_middle(digits, 0, 2)


def _cards(text: str) -> Iterator[str]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits):
            yield _mask_middle(digits, 0, 4)


def _ibans(text: str) -> Iterator[str]:
    for m in _IBAN.finditer(text):
        if iban_valid(m.group()):
            compact = m.group().replace(" ", "")
            yield _mask_middle(compact, 4, 2)


def _ip_addresses(text: str) -> Iterator[str]:
    for pattern in (_IPV4, _IPV6):
        for m in pattern.finditer(text):
            candidate = m.group()
            if pattern is _IPV6 and sum(1 for g in candidate.split(":") if g) < 2:
                continue  # "a::b"-like bits of code and times, not addresses
            try:
                address = ipaddress.ip_address(candidate)
            except ValueError:
                continue
            yield _mask_ip(address)


def _mask_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The network half kept, the host half starred.

    >>> _mask_ip(ipaddress.ip_address("192.168.10.77"))
    '192.168.*.*'
    """
    if isinstance(address, ipaddress.IPv4Address):
        return ".".join(str(address).split(".")[:2] + ["*", "*"])
    groups = address.exploded.split(":")
    return ":".join(groups[:2] + ["*"] * 6)


def _api_keys(text: str) -> Iterator[str]:
    for m in _API_KEY.finditer(text):
        key = m.group()
        prefix = re.match(r"[A-Za-z]+[-_](?:(?:proj|ant|live|test|pat)[-_])?|AKIA|ASIA|AIza", key)
        yield _mask_middle(key, len(prefix.group()) if prefix else 3, 2)


def _private_keys(text: str) -> Iterator[str]:
    for m in _PRIVATE_KEY.finditer(text):
        yield m.group() + "***"


DETECTORS: dict[Kind, Callable[[str], Iterator[str]]] = {
    "email": _emails, "phone": _phones, "card": _cards, "iban": _ibans,
    "ip_address": _ip_addresses, "api_key": _api_keys, "private_key": _private_keys,
}


def scan(text: str) -> list[Finding]:
    """Every finding in ``text``, by kind in :data:`DETECTORS`' order, each excerpt once.

    >>> [(f.kind, f.excerpt) for f in scan("jane.doe@example.com, 4111 1111 1111 1111")]
    [('email', 'j***@example.com'), ('card', '************1111')]
    """
    seen: set[tuple[str, str]] = set()
    out: list[Finding] = []
    for kind, detect in DETECTORS.items():
        for excerpt in detect(text):
            if (kind, excerpt) not in seen:
                seen.add((kind, excerpt))
                out.append(Finding(kind, excerpt))
    return out
