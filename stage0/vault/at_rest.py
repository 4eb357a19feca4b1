"""Values other than credentials kept encrypted at rest under a tenant's data key: the
transcripts a tenant opts to keep, memory (issue 12). The same sealing as secrets.

    sealed = at_rest.seal_for(conn, key, master, "acme", text, {"purpose": "transcript",
                                                                 "execution_id": span_id})
    text = at_rest.open_for(conn, master, "acme", sealed, {"purpose": "transcript",
                                                           "execution_id": span_id})

`sealed` is {"alg", "nonce", "ciphertext", "key_version"}, to store in a span's content. The
associated data always includes the tenant (added here), so a value sealed for one tenant
never opens as another's; name in `aad` whatever else the value must stay bound to (its
purpose and the span it belongs to), and rebuild it from there when opening.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.keys import derivation_secret
from stage0.ledger import store
from stage0.ledger.db import Connection
from stage0.ledger.store import CHAIN_CODES
from stage0.vault import crypto, tenant_keys
from stage0.vault.credentials import HomeOrMaster, tenant_heads
from stage0.vault.master import resolve

#: The name no secret has (names are 1-128 characters): tenant_heads() then reads the
#: tenant's data key alone.
_NO_SECRET = ""


def data_keys(conn: Connection, key: SigningKey, master: HomeOrMaster, tenant_id: str, *,
              id_secret: bytes | None = None,
              root_key: str | None = None) -> tenant_keys.DataKeys:
    """The tenant's data keys, the first one created (and recorded) when it has none."""
    found = resolve(master)
    for attempt in range(5):
        tk_head, _ = tenant_heads(conn, tenant_id, _NO_SECRET, root_key)
        if tk_head is not None:
            return tenant_keys.unwrap(tk_head, found)
        draft, keys = tenant_keys.first_draft(id_secret or derivation_secret(key), found,
                                               tenant_id)
        try:
            store.append(conn, [draft], key)
            return keys
        except LoglineError as exc:  # another process created it first: use that one
            if exc.code not in (*CHAIN_CODES, "LEDGER_DUPLICATE") or attempt == 4:
                raise
    raise AssertionError("unreachable")


def _bound(tenant_id: str, aad: Mapping[str, Any]) -> dict[str, Any]:
    if "tenant_id" in aad and aad["tenant_id"] != tenant_id:
        raise LoglineError("SECRET_UNREADABLE", "the associated data names another tenant",
                           f"tenant {tenant_id}")
    return {**aad, "tenant_id": tenant_id}


def seal_for(conn: Connection, key: SigningKey, master: HomeOrMaster, tenant_id: str,
             plaintext: bytes | str, aad: Mapping[str, Any], *, id_secret: bytes | None = None,
             root_key: str | None = None) -> dict[str, Any]:
    keys = data_keys(conn, key, master, tenant_id, id_secret=id_secret, root_key=root_key)
    return {**crypto.seal(keys.key(), plaintext, _bound(tenant_id, aad)),
            "key_version": keys.current}


def seal_with(keys: tenant_keys.DataKeys, tenant_id: str, plaintext: bytes | str,
              aad: Mapping[str, Any]) -> dict[str, Any]:
    """seal_for() with data keys already at hand (read once before a call, sealed after it)."""
    if keys.tenant_id != tenant_id:
        raise LoglineError("SECRET_UNREADABLE", "these data keys are another tenant's",
                           f"tenant {tenant_id}")
    return {**crypto.seal(keys.key(), plaintext, _bound(tenant_id, aad)),
            "key_version": keys.current}


def open_for(conn: Connection, master: HomeOrMaster, tenant_id: str,
             sealed: Mapping[str, Any], aad: Mapping[str, Any], *,
             root_key: str | None = None) -> bytes:
    tk_head, _ = tenant_heads(conn, tenant_id, _NO_SECRET, root_key)
    if tk_head is None:
        raise LoglineError("SECRET_UNREADABLE", f"tenant {tenant_id} has no data key",
                           f"tenant {tenant_id}")
    keys = tenant_keys.unwrap(tk_head, resolve(master))
    try:
        version = int(sealed["key_version"])
    except (KeyError, TypeError, ValueError):
        raise LoglineError("SECRET_UNREADABLE", "no key_version in the sealed value",
                           f"tenant {tenant_id}") from None
    return crypto.open_(keys.key(version), sealed, _bound(tenant_id, aad), f"tenant {tenant_id}")
