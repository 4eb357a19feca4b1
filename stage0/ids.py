"""Ids the platform derives (policy cursors and emissions, rollups, job claims, contracts,
api key spans): a UUID from a keyed BLAKE3 hash of the parts, so the same parts always give
the same id (idempotent appends) while nobody without the ledger's secret (schema 0007) can
compute it first. Derived from public inputs alone (uuid5), such an id could be taken by any
writer before the platform appended it, wedging a policy or an agent for good, and served as
an oracle on other tenants' names.
"""

from __future__ import annotations

import uuid
from typing import Any

import blake3


def derive_id(secret: bytes, *parts: object) -> str:
    """A version-8 UUID (RFC 9562, custom) from the keyed hash of `parts`."""
    data = "\x1f".join(map(str, parts)).encode("utf-8")
    raw = bytearray(blake3.blake3(data, key=secret).digest(16))
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(raw)))


_SECRETS: dict[tuple[str, str, str], bytes] = {}


def secret(conn: Any) -> bytes:
    """The ledger's derivation secret (schema 0007; readable by the kernel role only),
    read once per database and process."""
    info = conn.info
    where = (info.host, str(info.port), info.dbname)
    found = _SECRETS.get(where)
    if found is None:
        row = conn.execute("SELECT derivation FROM ledger.platform_secret").fetchone()
        found = bytes(row["derivation"] if isinstance(row, dict) else row[0])
        _SECRETS[where] = found
    return found
