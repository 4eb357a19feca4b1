"""Which spans a view may present as the platform's records, and how it says what it left out.

A view that *interprets* spans (metrics, executions, kernels, contracts, the approvals inbox,
a request's state, the audit export) counts a span as a record only when it is

- signed by a platform key (`stage0.spans.kinds.platform_keys`: the root key and the manifest's
  keys with role `platform`). Whatever a client posts through `POST /api/spans` is signed by
  another key, so a tenant's look-alike can always be told apart by its `public_key`;
- of the caller's tenant (another tenant's `public` spans are never counted as yours).

Anything else is either left out or marked with its author, never shown as the platform's.
A span a view cannot read (a record whose fields are not what the platform writes) is
skipped and *flagged* (`{"id", "reason", "detail"}`), so one bad record never breaks a view.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stage0.errors import LoglineError
from stage0.ledger import manifest, store
from stage0.ledger.db import Connection
from stage0.spans import kinds

#: How a span stands towards the platform (the audit export's `record` field).
PLATFORM, TENANT, FORGED = "platform", "tenant", "forged"
#: Flag reasons (docs/errors.md).
NOT_PLATFORM_SIGNED = "KIND_NOT_PLATFORM_SIGNED"
MALFORMED = "RECORD_MALFORMED"
PLAN_MALFORMED = "PLAN_MALFORMED"


@dataclass(frozen=True)
class Platform:
    """The keys that sign platform records and the kinds only they may sign, as the latest
    manifest says (read once per request)."""

    keys: frozenset[str]
    kinds: frozenset[str]

    def record(self, span: Mapping[str, Any]) -> str:
        """`platform` (signed by a platform key), `forged` (a platform kind signed by any
        other key: a named violation, never a record) or `tenant` (anything a tenant wrote)."""
        if span.get("public_key") in self.keys:
            return PLATFORM
        return FORGED if span.get("entity_type") in self.kinds else TENANT

    def counts(self, span: Mapping[str, Any], tenant_id: str | None) -> bool:
        """A platform record of `tenant_id` (any tenant when None)."""
        return span.get("public_key") in self.keys and (
            tenant_id is None or span.get("tenant_id") == tenant_id)


#: (root key, manifest head's curr_hash) -> Platform: the manifest's signature is checked
#: once per version, not once per request.
_BY_HEAD: dict[tuple[str, str], Platform] = {}


def platform(conn: Connection, root_key: str) -> Platform:
    """The platform's keys and kinds from the latest manifest (the root key and the default
    kinds when the ledger holds none yet)."""
    head = store.head(conn, manifest.MANIFEST_ID)
    if head is None:
        return Platform(kinds.platform_keys(None, root_key), kinds.platform_kinds(None))
    cached = _BY_HEAD.get((root_key, head["curr_hash"]))
    if cached is not None:
        return cached
    try:
        latest = manifest.latest(conn, root_key)  # intact and signed by the root key
    except LoglineError as exc:
        if exc.code != "MANIFEST_NOT_FOUND":
            raise
        return Platform(kinds.platform_keys(None, root_key), kinds.platform_kinds(None))
    metadata = latest.get("metadata")
    found = Platform(kinds.platform_keys(metadata, root_key), kinds.platform_kinds(metadata))
    if len(_BY_HEAD) > 64:
        _BY_HEAD.clear()
    _BY_HEAD[(root_key, latest["curr_hash"])] = found
    return found


def flag(span_id: Any, reason: str, detail: str = "") -> dict[str, str]:
    """What a view says about a span it skipped."""
    return {"id": str(span_id), "reason": reason, "detail": detail[:300]}


def counted(spans: list[dict[str, Any]], platform: Platform, tenant_id: str,
            flags: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The spans that count (signed by the platform, of `tenant_id`). A platform kind signed
    by any other key is added to `flags` (once per id), never counted."""
    out = []
    for span in spans:
        if platform.counts(span, tenant_id):
            out.append(span)
        elif platform.record(span) == FORGED and all(f["id"] != span["id"] for f in flags):
            flags.append(flag(span["id"], NOT_PLATFORM_SIGNED, f"a span of kind "
                              f"{span['entity_type']} signed by {span['public_key']}, not by "
                              "the platform"))
    return out


def plan_problem(ops: Any) -> str | None:
    """Why `ops` is not a plan an approver can be shown, or None: a plan is a list of
    objects, each naming its `op` and `path` as text, with `to` (and a duplicate's
    `duplicate_of` and `kept_because`) text or null and `size` a whole number >= 0 when
    present."""
    if not isinstance(ops, list):
        return f"ops is {type(ops).__name__}, not a list of operations"
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            return f"ops[{i}] is {type(op).__name__}, not an object"
        for name in ("op", "path"):
            if not isinstance(op.get(name), str) or not op[name]:
                return f"ops[{i}].{name} is not text"
        for name in ("to", "duplicate_of", "kept_because"):
            if op.get(name) is not None and not isinstance(op[name], str):
                return f"ops[{i}].{name} is neither text nor null"
        size = op.get("size")
        if size is not None and (type(size) is not int or size < 0):
            return f"ops[{i}].size is not a whole number of bytes"
    return None
