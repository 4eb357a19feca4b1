"""Credentials: named secret values per tenant (an LLM provider's API key...), encrypted in
the ledger. Stage 0 reveals them to make a call; sandboxed code never gets them.

Each value is a span (entity_type `secret`, id derived per tenant and name with the platform's
id secret, platform-signed, private and owned by `system`, so no API key, not even the
tenant's own, can read even the ciphertext); each new value is the next version (version =
seq + 1):

    content = {"name", "version", "key_version", "alg", "nonce", "ciphertext", "aad"}

sealed by the tenant's data key (tenant_keys.py) with associated data {"purpose": "secret",
"tenant_id", "name", "version"}. The AAD is rebuilt from the span's own tenant column and the
name and version asked for, never taken from the stored copy (which is there to be read), so
a ciphertext moved to another tenant, name or version does not open.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from nacl.signing import SigningKey

from stage0.config import Home
from stage0.errors import LoglineError
from stage0.keys import derivation_secret
from stage0.ledger import records, store
from stage0.ledger.db import Connection
from stage0.ledger.queries import q
from stage0.ledger.store import CHAIN_CODES
from stage0.spans.canonical import format_at
from stage0.spans.ids import derive_id
from stage0.vault import crypto, tenant_keys
from stage0.vault import master as masters
from stage0.vault.master import Master

KIND = "secret"
NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}\Z")
TENANT = re.compile(r"^[A-Za-z0-9_.@:-]{1,200}\Z")
MAX_VALUE_BYTES = 64 * 1024
RETRIES = 5
REVOKED = "revoked"

HomeOrMaster = Home | Master | bytes


def span_id(id_secret: bytes, tenant_id: str, name: str) -> str:
    return derive_id(id_secret, KIND, tenant_id, name)


def aad(tenant_id: str, name: str, version: int) -> dict[str, Any]:
    return {"purpose": KIND, "tenant_id": tenant_id, "name": name, "version": version}


# --- writing ------------------------------------------------------------------------------
def put(conn: Connection, key: SigningKey, master: HomeOrMaster, tenant_id: str, name: str,
        value: str, *, id_secret: bytes | None = None,
        root_key: str | None = None) -> dict[str, Any]:
    """Store `value` as the next version of tenant `tenant_id`'s secret `name` (the first,
    when there is none). Returns what `names()` lists for it: never the value. Given a home
    with no master key, creates keys/master.key when the ledger holds no data key yet."""
    return _write(conn, key, master, tenant_id, name, value, id_secret, root_key, rotating=False)


def rotate(conn: Connection, key: SigningKey, master: HomeOrMaster, tenant_id: str, name: str,
           value: str, *, id_secret: bytes | None = None,
           root_key: str | None = None) -> dict[str, Any]:
    """Replace an existing secret's value with a new version (SECRET_NOT_FOUND if none)."""
    return _write(conn, key, master, tenant_id, name, value, id_secret, root_key, rotating=True)


def revoke(conn: Connection, key: SigningKey, tenant_id: str, name: str, *,
           root_key: str | None = None) -> dict[str, Any]:
    """Stop a secret from being revealed (SECRET_REVOKED from now on) until a new value is
    set: a next version with status `revoked` and no ciphertext. Older versions stay sealed
    in the ledger's history. Needs no master key."""
    _check_names(tenant_id, name)
    _, heads = tenant_heads(conn, tenant_id, name, root_key)
    head = heads.get(name)
    if head is None:
        raise _not_found(tenant_id, name)
    if head["status"] == REVOKED:
        raise LoglineError("SECRET_REVOKED", "already revoked", _where(tenant_id, name))
    version = head["seq"] + 2
    span = store.append(conn, [{
        **{k: head[k] for k in ("id", "entity_type", "who", "name", "owner_id", "tenant_id",
                                "visibility")},
        "seq": head["seq"] + 1, "prev_hash": head["curr_hash"], "status": REVOKED,
        "did": "revoked", "this": f"secret {name} v{version} (revoked)",
        "content": {"name": name, "version": version, "revoked": True}}], key)[0]
    return _listed(span, _first_at(conn, [span["id"]]).get(span["id"]))


def _write(conn: Connection, key: SigningKey, master: HomeOrMaster, tenant_id: str, name: str,
           value: str, id_secret: bytes | None, root_key: str | None,
           rotating: bool) -> dict[str, Any]:
    _check_names(tenant_id, name)
    plaintext = _check_value(value)
    found = _master_for_write(conn, master)
    secret = id_secret or derivation_secret(key)
    root = _root(master, root_key)
    for attempt in range(RETRIES):
        try:
            return _write_once(conn, key, found, secret, root, tenant_id, name, plaintext,
                               rotating)
        except LoglineError as exc:  # another writer appended first: read the heads again
            if exc.code not in (*CHAIN_CODES, "LEDGER_DUPLICATE") or attempt == RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def _write_once(conn: Connection, key: SigningKey, found: Master, secret: bytes,
                root: str | None, tenant_id: str, name: str, plaintext: bytes,
                rotating: bool) -> dict[str, Any]:
    tk_head, heads = tenant_heads(conn, tenant_id, name, root)
    head = heads.get(name)
    if rotating and head is None:
        raise _not_found(tenant_id, name)
    drafts = []
    if tk_head is None:
        draft, keys = tenant_keys.first_draft(secret, found, tenant_id)
        drafts.append(draft)
    else:
        keys = tenant_keys.unwrap(tk_head, found)
    version = 1 if head is None else head["seq"] + 2
    sealed = crypto.seal(keys.key(), plaintext, aad(tenant_id, name, version))
    drafts.append({
        "id": span_id(secret, tenant_id, name), "seq": version - 1,
        **({"prev_hash": head["curr_hash"]} if head else {}),
        "entity_type": KIND, "who": "logline", "did": "rotated" if head else "set",
        "this": f"secret {name} v{version}", "name": name, "owner_id": "system",
        "tenant_id": tenant_id, "visibility": "private", "status": "active",
        "content": {"name": name, "version": version, "key_version": keys.current,
                    **sealed, "aad": aad(tenant_id, name, version)},
    })
    span = store.append(conn, drafts, key)[-1]
    return _listed(span, _first_at(conn, [span["id"]]).get(span["id"]))


def master_for_write(conn: Connection, given: HomeOrMaster) -> Master:
    """The master key to seal with: the home's, created when the ledger holds no data key
    yet (as the first `secrets set` does); MASTER_KEY_MISSING otherwise."""
    return _master_for_write(conn, given)


def _master_for_write(conn: Connection, given: HomeOrMaster) -> Master:
    try:
        return masters.resolve(given)
    except LoglineError as exc:
        if exc.code != "MASTER_KEY_MISSING" or not isinstance(given, Home):
            raise
        if conn.execute(q("vault_tenant_keys")).fetchone() is not None:
            raise LoglineError("MASTER_KEY_MISSING", "the ledger holds data keys wrapped by a "
                               "master key that is not here: restore keys/master.key from "
                               f"your backup or set {masters.ENV}; a new master key would "
                               "leave every stored secret unreadable",
                               str(masters.path(given))) from None
        return masters.create(given)


# --- reading ------------------------------------------------------------------------------
def reveal(conn: Connection, home_or_master: HomeOrMaster, tenant_id: str, name: str, *,
           root_key: str | None = None) -> str:
    """The plaintext of tenant `tenant_id`'s secret `name` (its latest version). For stage 0
    only: never handed to sandboxed code, never logged. MASTER_KEY_MISSING without a master
    key, SECRET_NOT_FOUND when the tenant has no such secret (another tenant's is not
    there), SECRET_REVOKED, MASTER_KEY_WRONG / SECRET_UNREADABLE when it does not open."""
    found = masters.resolve(home_or_master)
    _check_names(tenant_id, name)
    tk_head, heads = tenant_heads(conn, tenant_id, name, _root(home_or_master, root_key))
    head = heads.get(name)
    if head is None:
        raise _not_found(tenant_id, name)
    if tk_head is None:
        raise LoglineError("SECRET_UNREADABLE", f"tenant {tenant_id} has no data key",
                           _where(tenant_id, name))
    return open_span(head, tenant_keys.unwrap(tk_head, found), name).decode("utf-8")


def open_span(span: Mapping[str, Any], keys: tenant_keys.DataKeys, name: str) -> bytes:
    """The plaintext of one version of a secret span."""
    body = span.get("content") or {}
    where = _where(span["tenant_id"], name)
    if span.get("status") == REVOKED:
        raise LoglineError("SECRET_REVOKED", "this secret was revoked; `logline secrets set` "
                           "gives it a new value", where)
    try:
        version, key_version = int(body["version"]), int(body["key_version"])
    except (KeyError, TypeError, ValueError):
        raise LoglineError("SECRET_UNREADABLE", "not a secret record", where) from None
    return crypto.open_(keys.key(key_version), body,
                        aad(span["tenant_id"], name, version), where)


def names(conn: Connection, tenant_id: str, *,
          root_key: str | None = None) -> list[dict[str, Any]]:
    """The tenant's secrets: name, version, status (active or revoked), created_at,
    updated_at. Never a value."""
    _, heads = tenant_heads(conn, tenant_id, None, root_key)
    first = _first_at(conn, [h["id"] for h in heads.values()])
    return sorted((_listed(h, first.get(h["id"])) for h in heads.values()),
                  key=lambda s: s["name"])


def _first_at(conn: Connection, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    return {r["id"]: format_at(r["first_at"])
            for r in conn.execute(q("vault_first_at"), {"ids": ids})}


def _listed(span: Mapping[str, Any], created_at: str | None) -> dict[str, Any]:
    return {"name": span["name"], "version": span["seq"] + 1, "tenant_id": span["tenant_id"],
            "status": span["status"], "created_at": created_at, "updated_at": span["at"]}


def tenant_heads(conn: Connection, tenant_id: str, name: str | None, root_key: str | None
           ) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """The tenant's tenant_key head and its secrets' heads by name, counting only spans a
    platform key signed when the root key is known (else any, refusing look-alikes)."""
    rows = [store.span_from_row(r) for r in conn.execute(
        q("vault_heads"), {"tenant_id": tenant_id, "name": name})]
    if root_key is not None:
        platform = records.platform(conn, root_key)
        rows = [s for s in rows if platform.counts(s, tenant_id)]
    tk = [s for s in rows if s["entity_type"] == tenant_keys.KIND]
    secrets: dict[str, dict[str, Any]] = {}
    for span in rows:
        if span["entity_type"] == KIND:
            if span["name"] in secrets:
                raise _several(tenant_id, span["name"])
            secrets[span["name"]] = span
    if len(tk) > 1:
        raise _several(tenant_id, name)
    return (tk[0] if tk else None), secrets


def _several(tenant_id: str, name: str | None) -> LoglineError:
    return LoglineError("SECRET_UNREADABLE", "several spans claim this tenant's data key or "
                        "secret: look at `logline spans --entity-type secret` and "
                        "`--entity-type tenant_key`", _where(tenant_id, name))


def _root(given: HomeOrMaster, root_key: str | None) -> str | None:
    if root_key is not None:
        return root_key
    return given.read_config().get("root_public_key") if isinstance(given, Home) else None


# --- checks -------------------------------------------------------------------------------
def _check_names(tenant_id: str, name: str) -> None:
    if not isinstance(tenant_id, str) or not TENANT.match(tenant_id):
        raise LoglineError("SECRET_BAD_NAME", "a tenant is 1-200 letters, digits or _.@:-",
                           "--tenant")
    if not isinstance(name, str) or not NAME.match(name):
        raise LoglineError("SECRET_BAD_NAME", "a secret's name is 1-128 letters, digits or "
                           "_.:- (e.g. openai_api_key)", "NAME")


def _check_value(value: str) -> bytes:
    if not isinstance(value, str):
        raise LoglineError("SECRET_EMPTY", "a secret's value is text", "value")
    data = value.encode("utf-8")
    if not value.strip():
        raise LoglineError("SECRET_EMPTY", "the value is empty (it is read from standard "
                           "input: `printf %s \"$KEY\" | logline secrets set NAME --tenant T`)",
                           "stdin")
    if len(data) > MAX_VALUE_BYTES:
        raise LoglineError("SECRET_TOO_LARGE", f"{len(data)} bytes; a secret holds at most "
                           f"{MAX_VALUE_BYTES}", "stdin")
    return data


def _not_found(tenant_id: str, name: str) -> LoglineError:
    return LoglineError("SECRET_NOT_FOUND", f"tenant {tenant_id} has no secret {name} "
                        "(`logline secrets list --tenant T`)", _where(tenant_id, name))


def _where(tenant_id: str, name: str | None) -> str:
    return f"secret {tenant_id}/{name}"
