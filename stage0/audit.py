"""The audit trail as a file: a governed request's spans (or a tenant's, by type) as JSON
lines or CSV, and the check an auditor runs on such a file.

JSON lines carry every field of each span, so every line verifies on its own: its BLAKE3
hash, its Ed25519 signature and whether the signing key is one the manifest trusts
(`logline verify --export FILE`). CSV is for people: the columns below, JSON fields as JSON
text, the same proofs.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from . import ledger
from .canonical import normalise
from .errors import LoglineError
from .proofs import check_proofs
from .queries import SPAN_COLUMNS

EXPORT_MAX = 10_000
COLUMNS = ("position", "id", "seq", "at", "entity_type", "who", "did", "this", "status",
           "owner_id", "tenant_id", "trace_id", "parent_id", "curr_hash", "signature",
           "public_key")
JSON_COLUMNS = ("input", "output", "content")
TRAIL = (
    f"SELECT {SPAN_COLUMNS}, position FROM ledger.visible_timeline "
    "WHERE (%(trace_id)s::text IS NULL OR trace_id = %(trace_id)s) "
    "AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s) "
    "AND (%(types)s::text[] IS NULL OR entity_type = ANY(%(types)s)) "
    "AND (%(after)s::bigint IS NULL OR position > %(after)s) "
    "ORDER BY position LIMIT %(limit)s"
)


def rows(conn: psycopg.Connection, *, trace_id: str | None = None, tenant: str | None = None,
         types: list[str] | None = None, after: int | None = None,
         limit: int = EXPORT_MAX) -> list[dict[str, Any]]:
    """Oldest first. Under the app role row-level security decides what is included; the
    operator's CLI (kernel role) names the tenant."""
    return [{**ledger.span_from_row(r), "position": r["position"]} for r in conn.execute(
        TRAIL, {"trace_id": trace_id, "tenant": tenant, "types": types, "after": after,
                "limit": limit})]


def render(spans: Iterable[dict[str, Any]], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(s, sort_keys=True, ensure_ascii=False) + "\n" for s in spans)
    if fmt != "csv":
        raise LoglineError("AUDIT_BAD_FORMAT", "format is jsonl or csv", fmt)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*COLUMNS, *JSON_COLUMNS])
    for s in spans:
        writer.writerow([s[c] for c in COLUMNS] + [
            json.dumps(s[c], sort_keys=True) if s[c] is not None else "" for c in JSON_COLUMNS])
    return buffer.getvalue()


@dataclass
class ExportCheck:
    spans: int = 0
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (line, id, reason)

    @property
    def ok(self) -> bool:
        return not self.failures


def check_export(lines: Iterable[str], trusted: frozenset[str]) -> ExportCheck:
    """Every line of a JSON-lines export: hash, signature, trusted key."""
    report = ExportCheck()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        report.spans += 1
        try:
            data = json.loads(line)
            data.pop("position", None)
            span = normalise(data)
        except (ValueError, LoglineError, AttributeError) as exc:
            report.failures.append((number, "?", f"UNREADABLE: {exc}"))
            continue
        proofs = check_proofs(span)
        if not proofs.ok:
            report.failures.append((number, span["id"], f"{proofs.reason}: {proofs.detail}"))
        elif span["public_key"] not in trusted:
            report.failures.append((number, span["id"], "KEY_UNTRUSTED: signed by a key the "
                                    "manifest does not trust"))
    return report
