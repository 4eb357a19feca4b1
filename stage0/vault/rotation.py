"""Rotation: a new master key re-wraps every tenant's data keys; a new data key version
re-encrypts a tenant's secrets.

Rotating the master key changes no secret: each tenant_key span gets a next version holding
the same data keys wrapped by the new master key, all tenants in ONE transaction (a failure
leaves every tenant on the old key). A span already wrapped by the new key is left as it is,
so running the rotation again after an interruption finishes it. A span wrapped by neither
key is refused (MASTER_KEY_WRONG) before anything is written.

Rotating a tenant's data key appends a new key version and a next version of each of the
tenant's secrets sealed by it (same values), in one transaction; the older key versions stay
(older versions of the secrets in the ledger's history are sealed by them).
"""

from __future__ import annotations

from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.ledger import records, store
from stage0.ledger.db import Connection
from stage0.ledger.queries import q
from stage0.vault import credentials, crypto, tenant_keys
from stage0.vault.master import Master


def rewrap_all(conn: Connection, key: SigningKey, old: Master, new: Master,
               root_key: str | None = None) -> dict[str, int]:
    """Re-wrap every tenant's data keys from `old` to `new`; {"rewrapped": n, "kept": m}
    (kept = already wrapped by `new`)."""
    if old.key_id == new.key_id:
        raise LoglineError("MASTER_KEY_INVALID", "the new master key is the old one")
    heads = [store.span_from_row(r) for r in conn.execute(q("vault_tenant_keys"))]
    if root_key is not None:
        platform = records.platform(conn, root_key)
        heads = [h for h in heads if platform.counts(h, None)]
    drafts, kept = [], 0
    for head in heads:
        if (head.get("content") or {}).get("master_key_id") == new.key_id:
            kept += 1
            continue
        keys = tenant_keys.unwrap(head, old)  # MASTER_KEY_WRONG for any other master key
        drafts.append(tenant_keys.next_draft(head, new, keys, "rewrapped"))
    if drafts:
        with conn.transaction():
            store.append(conn, drafts, key)
    return {"rewrapped": len(drafts), "kept": kept}


def rotate_data_key(conn: Connection, key: SigningKey, master: Master, tenant_id: str,
                    root_key: str | None = None) -> dict[str, Any]:
    """A new data key version for `tenant_id`, and every one of its secrets (but revoked
    ones) sealed again by it; {"tenant_id", "key_version", "secrets": n}."""
    tk_head, heads = credentials.tenant_heads(conn, tenant_id, None, root_key)
    if tk_head is None:
        raise LoglineError("SECRET_NOT_FOUND", f"tenant {tenant_id} has no data key yet "
                           "(it gets one with its first secret)", f"tenant_key {tenant_id}")
    keys = tenant_keys.unwrap(tk_head, master)
    version = max(keys.keys) + 1
    newer = tenant_keys.DataKeys(tenant_id, version, {**keys.keys, version: crypto.new_key()})
    drafts = [tenant_keys.next_draft(tk_head, master, newer, "rotated")]
    live = {name: head for name, head in heads.items() if head["status"] != credentials.REVOKED}
    drafts += [_resealed(head, name, keys, newer) for name, head in sorted(live.items())]
    with conn.transaction():
        store.append(conn, drafts, key)
    return {"tenant_id": tenant_id, "key_version": version, "secrets": len(live)}


def _resealed(head: dict[str, Any], name: str, old: tenant_keys.DataKeys,
              new: tenant_keys.DataKeys) -> dict[str, Any]:
    """The next version of a secret span: the same value, sealed by `new`'s current key."""
    version = head["seq"] + 2
    bindings = credentials.aad(head["tenant_id"], name, version)
    sealed = crypto.seal(new.key(), credentials.open_span(head, old, name), bindings)
    return {**{k: head[k] for k in ("id", "entity_type", "who", "name", "owner_id",
                                    "tenant_id", "visibility", "status")},
            "seq": head["seq"] + 1, "prev_hash": head["curr_hash"], "did": "resealed",
            "this": f"secret {name} v{version}",
            "content": {**head["content"], "version": version, "key_version": new.current,
                        **sealed, "aad": bindings}}
