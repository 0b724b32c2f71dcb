"""API keys and the organization they act for.

Keys are held only as SHA-256 digests in memory and compared in constant time; the raw key
never reaches a log line or a response.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from service.errors import AuthenticationFailed

_ORG_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Caller:
    organization: str


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_api_keys(spec: str) -> dict[bytes, str]:
    """``"key1=org-a,key2=org-b"`` -> {sha256(key): organization}.

    Organization names become part of model names (``ft:<base>:<org>:...``), so they may not
    hold ``:`` or other separators.
    """
    keys: dict[bytes, str] = {}
    for pair in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, org = pair.partition("=")
        if not sep or not key.strip() or not _ORG_RE.match(org.strip()):
            raise ValueError(
                "OPENFT_API_KEYS must be comma-separated key=organization pairs; organizations "
                "use letters, digits, '-' and '_'"
            )
        keys[_digest(key.strip())] = org.strip()
    return keys


def generate_key() -> str:
    return "sk-openft-" + secrets.token_urlsafe(32)


class KeyRing:
    def __init__(self, keys: dict[bytes, str]):
        self._keys = keys

    def authenticate(self, authorization: str | None) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            )
        digest = _digest(token.strip())
        for known, org in self._keys.items():
            if hmac.compare_digest(known, digest):
                return Caller(organization=org)
        raise AuthenticationFailed("Incorrect API key provided.")
