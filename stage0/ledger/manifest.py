"""The manifest span (latest version wins) and the trust it grants.

The manifest must be signed by the root key pinned in $LOGLINE_HOME/config.json; its
`metadata.trusted_keys` ([{name, public_key, role}]) lists the other keys whose signatures
count. The root key is always trusted. A key's role says what its signature may make
(stage0.spans.kinds): `platform` keys sign the platform's own records (executions, jobs,
approvals ...), `edge` (the API's key for what clients post) and `author` (policy and
function authors; the default) sign every other kind. `metadata.platform_kinds` lists the
kinds only platform keys may sign (never fewer than stage0.spans.kinds.PLATFORM_KINDS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.keys import edge_key
from stage0.ledger import store
from stage0.ledger.db import Connection
from stage0.spans import kinds
from stage0.spans.proofs import check_proofs, public_key_hex

MANIFEST_ID = "00000000-0000-4000-8000-0000000000aa"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
ROLES = ("platform", "edge", "author")
EDGE_NAME = "edge"


def latest(conn: Connection, root_key: str) -> dict[str, Any]:
    """The latest manifest, after checking it is intact and signed by the root key."""
    span = store.head(conn, MANIFEST_ID)
    if span is None:
        raise LoglineError("MANIFEST_NOT_FOUND", "no manifest in the ledger; run `logline seed`",
                           MANIFEST_ID)
    return latest_of(span, root_key)


def latest_of(span: dict[str, Any], root_key: str) -> dict[str, Any]:
    """`span` (the manifest's head, as read) after checking it is intact and signed by the
    root key."""
    check = check_proofs(span)
    if not check.ok:
        raise LoglineError("MANIFEST_UNTRUSTED", f"{check.reason}: {check.detail}", MANIFEST_ID)
    if span["public_key"] != root_key:
        raise LoglineError("MANIFEST_UNTRUSTED", f"signed by {span['public_key']}, not by the "
                           f"pinned root key {root_key}", MANIFEST_ID)
    return span


def trusted_keys(manifest: dict[str, Any] | None, root_key: str) -> frozenset[str]:
    entries = ((manifest or {}).get("metadata") or {}).get("trusted_keys") or []
    return frozenset([root_key, *(e["public_key"] for e in entries
                                  if isinstance(e, dict) and isinstance(e.get("public_key"), str))])


def trust_set(conn: Connection, root_key: str) -> frozenset[str]:
    try:
        return trusted_keys(latest(conn, root_key), root_key)
    except LoglineError as exc:
        if exc.code == "MANIFEST_NOT_FOUND":
            return frozenset([root_key])
        raise


@dataclass(frozen=True)
class Signers:
    """Who may sign what, as the latest manifest says."""

    trusted: frozenset[str]
    platform: frozenset[str]
    platform_kinds: frozenset[str]

    def violation(self, span: dict[str, Any]) -> str | None:
        """Why `span`'s signature does not count for its kind, or None when it does."""
        key = span.get("public_key")
        if key not in self.trusted:
            return "KEY_UNTRUSTED"
        if span.get("entity_type") in self.platform_kinds and key not in self.platform:
            return "KIND_NOT_PLATFORM_SIGNED"
        return None


def signers_of(manifest: dict[str, Any] | None, root_key: str) -> Signers:
    metadata = (manifest or {}).get("metadata") or {}
    return Signers(trusted_keys(manifest, root_key), kinds.platform_keys(metadata, root_key),
                   kinds.platform_kinds(metadata))


def signers(conn: Connection, root_key: str) -> Signers:
    """The latest manifest's Signers (only the root key, when there is no manifest yet)."""
    try:
        return signers_of(latest(conn, root_key), root_key)
    except LoglineError as exc:
        if exc.code == "MANIFEST_NOT_FOUND":
            return signers_of(None, root_key)
        raise


def edge_entry(root: SigningKey) -> dict[str, str]:
    return {"name": EDGE_NAME, "public_key": public_key_hex(edge_key(root)), "role": "edge"}


def ensure_edge_key(conn: Connection, root: SigningKey) -> dict[str, Any] | None:
    """Append a manifest version that trusts the API's edge key (role edge) if the latest
    does not; returns that version, or None when nothing was needed."""
    entry = edge_entry(root)
    current = (latest(conn, public_key_hex(root)).get("metadata") or {}).get("trusted_keys") or []
    if entry in current:
        return None
    entries = [e for e in current if e.get("public_key") != entry["public_key"]]
    return amend(conn, root, trusted_keys=sorted([*entries, entry], key=_entry_order))


def _entry_order(entry: dict[str, Any]) -> tuple[str, str]:
    return entry.get("name", ""), entry["public_key"]


def check_trusted_keys(entries: Any) -> list[dict[str, Any]]:
    """`metadata.trusted_keys` must be a list of {name, public_key (64 hex), role?}."""
    where = "metadata.trusted_keys"
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise LoglineError("MANIFEST_INVALID", "must be a list of {name, public_key}", where)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or \
                not _HEX64.match(str(entry.get("public_key", ""))):
            raise LoglineError("MANIFEST_INVALID", "each entry needs a name and a public_key "
                               "of 64 lowercase hex characters", f"{where}[{i}]")
        if entry.get("role", "author") not in ROLES:
            raise LoglineError("MANIFEST_INVALID", f"role must be one of {', '.join(ROLES)}",
                               f"{where}[{i}].role")
    return entries


def merge_trusted(entries: list[dict[str, Any]], current: list[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    """Keys trusted in the ledger stay trusted when a manifest row is re-seeded: trust is
    granted and withdrawn with `logline keys trust/untrust`, never by omission."""
    merged = {e["public_key"]: e for e in current}
    merged.update({e["public_key"]: e for e in entries})
    return sorted(merged.values(), key=_entry_order)


def set_trust(conn: Connection, root: SigningKey, public_key: str,
              name: str | None, trusted: bool, role: str = "author") -> dict[str, Any]:
    """Append the next manifest version with `public_key` added (with `role`) or removed."""
    public_key = public_key.strip().lower()
    if not _HEX64.match(public_key):
        raise LoglineError("KEY_INVALID", "a public key is 64 hex characters", public_key[:80])
    if public_key == public_key_hex(root):
        raise LoglineError("KEY_IS_ROOT", "the root key is always trusted and cannot be removed")
    if role not in ROLES:
        raise LoglineError("KEY_ROLE_INVALID", f"role must be one of {', '.join(ROLES)}", role)
    current = (latest(conn, public_key_hex(root)).get("metadata") or {}).get("trusted_keys") or []
    entries = [e for e in current if e.get("public_key") != public_key]
    if trusted:
        entries.append({"name": name or public_key[:12], "public_key": public_key,
                        "role": role})
    elif len(entries) == len(current):
        raise LoglineError("KEY_NOT_TRUSTED", "this key is not in the manifest", public_key)
    return amend(conn, root, trusted_keys=sorted(entries, key=_entry_order))


def amend(conn: Connection, root: SigningKey, **changes: Any) -> dict[str, Any]:
    """Append the next manifest version with these metadata keys replaced, signed by root."""
    current = latest(conn, public_key_hex(root))
    draft = {k: v for k, v in current.items()
             if k not in ("seq", "prev_hash", "curr_hash", "signature", "public_key", "at")}
    draft["metadata"] = {**(current.get("metadata") or {}), **changes}
    draft["seq"], draft["prev_hash"] = current["seq"] + 1, current["curr_hash"]
    return store.append(conn, [draft], root)[0]
