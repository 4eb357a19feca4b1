"""Load ROW/ NDJSON into the ledger. A file is all-or-nothing; re-seeding is a no-op.

Unsigned rows are the operator's deployment: they get `at`, `seq` and `prev_hash` at seed time
and are signed with the operator key. Signed rows (see `logline sign`) are stored exactly as
written, after their hash, signature and key trust check out. A row whose content equals the
current version of its id appends nothing; changed content appends the next seq.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from nacl.signing import SigningKey

from . import ledger, manifest, rows
from .canonical import FIELDS, normalise, now_at
from .errors import LoglineError
from .proofs import public_key_hex
from .queries import q

#: Fields a seed assigns; everything else is content and decides "changed or not".
CHAIN_FIELDS = ("at", "seq", "prev_hash", "curr_hash", "signature", "public_key")
CONTENT_FIELDS = tuple(f for f in FIELDS if f not in CHAIN_FIELDS)


@dataclass(frozen=True)
class SeedResult:
    path: Path
    appended: int
    unchanged: int


def seed(conn: psycopg.Connection, paths: Iterable[Path], key: SigningKey) -> list[SeedResult]:
    files = rows.expand(paths)
    # The manifest decides which keys count, so it goes first.
    files.sort(key=lambda p: "manifest" not in p.parts)
    return [seed_file(conn, path, key) for path in files]


def seed_file(conn: psycopg.Connection, path: Path, key: SigningKey) -> SeedResult:
    root = public_key_hex(key)
    parsed = rows.read(path)
    trusted = manifest.trust_set(conn, root)
    pending: list[dict[str, Any]] = []
    for row in parsed:
        try:
            draft = _draft(conn, row.data, root)
        except LoglineError as exc:
            raise exc.at(row.where) from None
        if draft is not None:
            pending.append(draft)
    if pending:
        try:
            ledger.append(conn, pending, key, trusted)
        except LoglineError as exc:
            raise exc.at(str(path)) from None
    return SeedResult(path, len(pending), len(parsed) - len(pending))


def _draft(conn: psycopg.Connection, data: dict[str, Any], root: str) -> dict[str, Any] | None:
    """What to append for one row, or None when the ledger already holds it."""
    if data.get("id") is None:
        raise LoglineError("SEED_ID_REQUIRED", "seeded rows need a stable `id` so that "
                           "re-seeding updates them instead of duplicating them", "id")
    if ledger.is_signed(data):
        return _signed_draft(conn, data, root)
    assigned = [f for f in CHAIN_FIELDS if f != "at" and data.get(f) is not None]
    if assigned:
        raise LoglineError("SEED_UNSIGNED_CHAIN_FIELDS", f"unsigned rows get {', '.join(assigned)}"
                           " at seed time; remove them, or sign the row with `logline sign`",
                           assigned[0])
    span = normalise({**data, "at": data.get("at") or now_at()})
    current = ledger.head(conn, span["id"])
    if current and span["entity_type"] == "manifest":
        metadata = dict(span["metadata"] or {})
        metadata["trusted_keys"] = manifest.merge_trusted(
            metadata.get("trusted_keys") or [],
            (current.get("metadata") or {}).get("trusted_keys") or [])
        span["metadata"] = metadata
    if current and all(span[f] == current[f] for f in CONTENT_FIELDS):
        return None
    return {f: span[f] for f in FIELDS if f not in CHAIN_FIELDS or f == "at"}


def _signed_draft(conn: psycopg.Connection, data: dict[str, Any], root: str) -> dict | None:
    span = normalise(data)
    if span["entity_type"] == "manifest" and span["public_key"] != root:
        raise LoglineError("MANIFEST_UNTRUSTED", "a manifest must be signed by the root key "
                           f"{root}", "public_key")
    existing = conn.execute(q("version_lookup"), {"id": span["id"], "seq": span["seq"]}).fetchone()
    if existing is None:
        return span
    if existing["curr_hash"] == span["curr_hash"]:
        return None
    raise LoglineError("SEED_CONFLICT", f"the ledger already holds a different seq {span['seq']}"
                       f" of {span['id']}; re-sign the row as the next version", "seq")
