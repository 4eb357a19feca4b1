"""Load ROW/ NDJSON into the ledger. A file is all-or-nothing; re-seeding is a no-op.

Unsigned rows are the operator's deployment: they get `at`, `seq` and `prev_hash` at seed time
and are signed with the operator key. Signed rows (see `logline sign`) are stored exactly as
written, after their hash, signature and key trust check out. A row whose content equals the
current version of its id appends nothing; changed content appends the next seq.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.ledger import db, manifest, quota, rows, store
from stage0.ledger.db import Connection
from stage0.ledger.queries import q
from stage0.spans.canonical import FIELDS, canonical_bytes, normalise, now_at
from stage0.spans.proofs import check_proofs, public_key_hex

#: Fields a seed assigns; everything else is content and decides "changed or not".
CHAIN_FIELDS = ("at", "seq", "prev_hash", "curr_hash", "signature", "public_key")
CONTENT_FIELDS = tuple(f for f in FIELDS if f not in CHAIN_FIELDS)


@dataclass(frozen=True)
class SeedResult:
    path: Path
    appended: int
    unchanged: int


def seed(conn: Connection, paths: Iterable[Path], key: SigningKey,
         on_file: Callable[[SeedResult], None] | None = None,
         progress: Callable[[int], None] | None = None) -> list[SeedResult]:
    """Seed files in order, each in its own transaction; `on_file` hears of each as it
    commits (so a later failure does not hide what was already done). `progress(n)` hears
    of steps done: STEPS_PER_ROW per row (checked, then appended or found unchanged), out
    of STEPS_PER_ROW * count_rows(paths)."""
    files = ordered(paths)
    results = []
    with db.unbounded(conn):  # a big file is one long statement, legitimately
        for path in files:
            results.append(seed_file(conn, path, key, progress or _silent))
            if on_file:
                on_file(results[-1])
    return results


def ordered(paths: Iterable[Path]) -> list[Path]:
    """The files to seed, in order: the manifest decides which keys count, so it goes first."""
    files = rows.expand(paths)
    files.sort(key=lambda p: "manifest" not in p.parts)
    return files


STEPS_PER_ROW = 2


def count_rows(paths: Iterable[Path]) -> int:
    """How many rows seeding `paths` reads (for a progress bar's total): non-blank lines of
    NDJSON files, one per contract file."""
    total = 0
    for path in ordered(paths):
        if path.suffix == ".yaml":
            total += 1
            continue
        try:
            total += sum(1 for line in path.read_bytes().split(b"\n") if line.strip())
        except OSError:
            continue  # seed_file names the problem
    return total


def _silent(n: int) -> None:
    return None


def seed_file(conn: Connection, path: Path, key: SigningKey,
              progress: Callable[[int], None] = _silent) -> SeedResult:
    root = public_key_hex(key)
    parsed = _contract_rows(path, key) if path.suffix == ".yaml" else rows.read(path)
    trusted = manifest.trust_set(conn, root)
    edge = manifest.edge_entry(key)
    chain: dict[str, tuple[int, str]] = {}  # id -> (seq, curr_hash) as this file leaves it
    unsigned_lines: dict[str, str] = {}
    pending: list[tuple[str, dict[str, Any]]] = []
    for row in parsed:
        try:
            draft = _draft(conn, row.data, root, edge, trusted, chain, unsigned_lines,
                           row.where)
        except LoglineError as exc:
            raise exc.at(row.where) from None
        if draft is not None:
            pending.append((row.where, draft))
        progress(1 if draft is not None else STEPS_PER_ROW)  # unchanged: nothing to append
    if pending:
        try:
            store.append(conn, [draft for _, draft in pending], key, trusted, progress)
        except LoglineError as exc:
            index = _span_index(exc)
            raise exc.at(pending[index][0] if index is not None else str(path)) from None
    return SeedResult(path, len(pending), len(parsed) - len(pending))


def _contract_rows(path: Path, key: SigningKey) -> list[rows.Row]:
    """A contract authored as YAML (ROW/contracts/NAME@VERSION.yaml) seeds one span, whose id
    is derived with the id secret of the key that seeds it (the root key)."""
    from stage0.gov.contracts import load, to_span
    from stage0.keys import derivation_secret

    return [rows.Row(path, 1, to_span(load(path), derivation_secret(key)))]


def _span_index(exc: LoglineError) -> int | None:
    """The batch index store.append put in front of an error (`span[i]: ...`), if any."""
    head = (exc.where or "").split(":", 1)[0]
    if head.startswith("span[") and head.endswith("]"):
        return int(head[5:-1])
    return None


def _draft(conn: Connection, data: dict[str, Any], root: str, edge: dict[str, str],
           trusted: frozenset[str], chain: dict[str, tuple[int, str]],
           unsigned_lines: dict[str, str], where: str) -> dict[str, Any] | None:
    """What to append for one row, or None when the ledger already holds it. Everything
    that can be checked before the insert is checked here, so errors name the line."""
    if data.get("id") is None:
        raise LoglineError("SEED_ID_REQUIRED", "seeded rows need a stable `id` so that "
                           "re-seeding updates them instead of duplicating them", "id")
    if store.is_signed(data):
        return _signed_draft(conn, data, root, trusted, chain)
    span_id = str(data["id"]).lower()
    if span_id in unsigned_lines:
        raise LoglineError("SEED_DUPLICATE_ID", f"this id already appears unsigned at "
                           f"{unsigned_lines[span_id]}; one file holds one version of an id "
                           "(re-seeding would otherwise flip between them)", "id")
    unsigned_lines[span_id] = where
    assigned = [f for f in CHAIN_FIELDS if f != "at" and data.get(f) is not None]
    if assigned:
        raise LoglineError("SEED_UNSIGNED_CHAIN_FIELDS", f"unsigned rows get {', '.join(assigned)}"
                           " at seed time; remove them, or sign the row with `logline sign`",
                           assigned[0])
    span = normalise({**data, "at": data.get("at") or now_at()})
    current = store.head(conn, span["id"])
    if span["entity_type"] == "manifest":
        metadata = dict(span["metadata"] or {})
        entries = manifest.check_trusted_keys(metadata.get("trusted_keys"))
        # The API's edge key is always trusted for what clients post (never platform kinds).
        entries = manifest.merge_trusted([edge], entries)
        if current:
            entries = manifest.merge_trusted(
                entries, (current.get("metadata") or {}).get("trusted_keys") or [])
            quota.carry_overrides(metadata, current.get("metadata") or {})
        metadata["trusted_keys"] = entries
        span["metadata"] = metadata
    if current and all(span[f] == current[f] for f in CONTENT_FIELDS):
        return None
    canonical_bytes({**span, "public_key": root})  # size limit, checked where the row is
    return {f: span[f] for f in FIELDS if f not in CHAIN_FIELDS or f == "at"}


def _signed_draft(conn: Connection, data: dict[str, Any], root: str,
                  trusted: frozenset[str], chain: dict[str, tuple[int, str]]
                  ) -> dict[str, Any] | None:
    span = normalise(data)
    if span["entity_type"] == "manifest" and span["public_key"] != root:
        raise LoglineError("MANIFEST_UNTRUSTED", "a manifest must be signed by the root key "
                           f"{root}", "public_key")
    existing = conn.execute(q("version_lookup"), {"id": span["id"], "seq": span["seq"]}).fetchone()
    if existing is not None:
        if existing["curr_hash"] == span["curr_hash"]:
            chain[span["id"]] = (span["seq"], span["curr_hash"])
            return None
        raise LoglineError("SEED_CONFLICT", f"the ledger already holds a different seq "
                           f"{span['seq']} of {span['id']}; re-sign the row as the next version",
                           "seq")
    check = check_proofs(span)
    if not check.ok:
        raise LoglineError(check.reason or "PROOF_INVALID", check.detail, "curr_hash")
    if span["public_key"] not in trusted:
        raise LoglineError("KEY_UNTRUSTED", f"signed by {span['public_key']}, which the "
                           "manifest does not trust (`logline keys trust`)", "public_key")
    _check_follows(conn, span, chain)
    chain[span["id"]] = (span["seq"], span["curr_hash"])
    return span


def _check_follows(conn: Connection, span: dict[str, Any],
                   chain: dict[str, tuple[int, str]]) -> None:
    """A signed row must be the next version of what the ledger (or this file) holds."""
    if span["id"] not in chain:
        heads = store.current_heads(conn, [span["id"]])
        if heads:
            chain[span["id"]] = heads[span["id"]]
    head = chain.get(span["id"])
    expected = head[0] + 1 if head else 0
    if span["seq"] > expected:
        raise LoglineError("LEDGER_SEQ_GAP", f"seq {span['seq']} skips versions: the next "
                           f"version of {span['id']} is seq {expected}", "seq")
    if span["seq"] < expected:
        raise LoglineError("LEDGER_SEQ_CONFLICT", f"seq {span['seq']} of {span['id']} is "
                           "already taken", "seq")
    if head and span["prev_hash"] != head[1]:
        raise LoglineError("LEDGER_PREV_HASH_MISMATCH", f"prev_hash is not the curr_hash of "
                           f"seq {head[0]}", "prev_hash")
