"""Ids the platform derives (policy cursors and emissions, rollups, job claims, contracts,
api key spans): a UUID from a keyed BLAKE3 hash of the parts, so the same parts always give
the same id (idempotent appends) while nobody without the platform's id secret
(stage0.keys.id_secret) can compute it first. Derived from public inputs alone (uuid5), such
an id could be taken by any writer before the platform appended it, wedging a policy or an
agent for good, and served as an oracle on other tenants' names.
"""

from __future__ import annotations

import uuid

import blake3


def derive_id(secret: bytes, *parts: object) -> str:
    """A version-8 UUID (RFC 9562, custom) from the keyed hash of `parts`."""
    data = "\x1f".join(map(str, parts)).encode("utf-8")
    raw = bytearray(blake3.blake3(data, key=secret).digest(16))
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(raw)))


def legacy_id(*parts: object) -> str:
    """The uuid5 such an id had before ids were keyed. Read-only: to find what an older
    version recorded (callers accept only kinds no client can write); never an id to append
    under, since anyone can compute it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "logline:" + ":".join(map(str, parts))))
