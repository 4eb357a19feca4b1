"""Tenant data keys: one span per tenant (entity_type `tenant_key`, platform-signed, private,
owned by `system` so no API key can read it) holding every version of the tenant's data key,
each wrapped (AES-256-GCM) by the master key.

    content = {"tenant_id", "current": N, "master_key_id", "alg",
               "keys": [{"version": 1, "alg", "nonce", "ciphertext"}, ...]}

The wrapping's associated data binds tenant and key version, so a wrapped key copied into
another tenant's span does not open. A new version of the span is appended when the data key
gets a new version, or when the master key is rotated (every version re-wrapped, the data
keys themselves unchanged: the secrets they seal stay as they are).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stage0.errors import LoglineError
from stage0.spans.ids import derive_id
from stage0.vault import crypto
from stage0.vault.master import Master

KIND = "tenant_key"


@dataclass(frozen=True)
class DataKeys:
    """A tenant's data keys, unwrapped (never printed: repr shows versions only)."""

    tenant_id: str
    current: int
    keys: dict[int, bytes] = field(repr=False)

    def key(self, version: int | None = None) -> bytes:
        found = self.keys.get(self.current if version is None else version)
        if found is None:
            raise LoglineError("SECRET_UNREADABLE", f"tenant {self.tenant_id} has no data key "
                               f"version {version}", f"tenant_key {self.tenant_id}")
        return found


def span_id(id_secret: bytes, tenant_id: str) -> str:
    return derive_id(id_secret, KIND, tenant_id)


def aad(tenant_id: str, version: int) -> dict[str, Any]:
    return {"purpose": KIND, "tenant_id": tenant_id, "key_version": version}


def content(master: Master, keys: DataKeys) -> dict[str, Any]:
    return {"tenant_id": keys.tenant_id, "current": keys.current, "master_key_id": master.key_id,
            "alg": crypto.ALG,
            "keys": [{"version": v, **crypto.seal(master.key, k, aad(keys.tenant_id, v))}
                     for v, k in sorted(keys.keys.items())]}


#: (span's curr_hash, master key id) -> its unwrapped keys: a hot path (a provider call
#: reveals its credential) then skips the unwrapping. Bounded; a new version has a new hash.
_CACHE: dict[tuple[str, str], DataKeys] = {}


def unwrap(span: Mapping[str, Any], master: Master) -> DataKeys:
    """The data keys in a tenant_key span; MASTER_KEY_WRONG when another master key wrapped
    them, SECRET_UNREADABLE when they do not open (altered, or moved from another tenant)."""
    cached = _CACHE.get((span["curr_hash"], master.key_id))
    if cached is not None:
        return cached
    tenant_id, where = span["tenant_id"], f"tenant_key {span['tenant_id']}"
    body = span.get("content") or {}
    if body.get("master_key_id") != master.key_id:
        raise LoglineError("MASTER_KEY_WRONG", f"tenant {tenant_id}'s data key is wrapped by "
                           f"master key {str(body.get('master_key_id'))[:16]}, not by the one "
                           f"given ({master.key_id}, from {master.source})", where)
    try:
        keys = {int(e["version"]): crypto.open_(master.key, e, aad(tenant_id, int(e["version"])),
                                                where)
                for e in body["keys"]}
        current = int(body["current"])
    except (KeyError, TypeError, ValueError):
        raise LoglineError("SECRET_UNREADABLE", "not a tenant_key record", where) from None
    found = DataKeys(tenant_id, current, keys)
    if current not in keys:
        raise LoglineError("SECRET_UNREADABLE", "the current data key version is missing", where)
    if len(_CACHE) > 256:
        _CACHE.clear()
    _CACHE[(span["curr_hash"], master.key_id)] = found
    return found


def first_draft(id_secret: bytes, master: Master, tenant_id: str) -> tuple[dict[str, Any],
                                                                             DataKeys]:
    """The tenant's first tenant_key span (data key version 1) and its keys."""
    keys = DataKeys(tenant_id, 1, {1: crypto.new_key()})
    return {"id": span_id(id_secret, tenant_id), "seq": 0, **_fields(tenant_id, "created"),
            "content": content(master, keys)}, keys


def next_draft(head: Mapping[str, Any], master: Master, keys: DataKeys,
               did: str) -> dict[str, Any]:
    """The next version of a tenant_key span holding `keys` wrapped by `master`."""
    return {"id": head["id"], "seq": head["seq"] + 1, "prev_hash": head["curr_hash"],
            **_fields(keys.tenant_id, did), "content": content(master, keys)}


def _fields(tenant_id: str, did: str) -> dict[str, Any]:
    return {"entity_type": KIND, "who": "logline", "did": did,
            "this": f"data key of tenant {tenant_id}", "owner_id": "system",
            "tenant_id": tenant_id, "visibility": "private", "status": "active"}
