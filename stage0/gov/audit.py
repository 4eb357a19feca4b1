"""The audit trail as a file: a governed request's spans (or a tenant's, by type) as JSON
lines or CSV, and the check an auditor runs on such a file.

JSON lines carry every field of each span, so every line verifies on its own: its BLAKE3
hash, its Ed25519 signature and whether the signing key is one the manifest trusts
(`logline verify --export FILE`). Each line also says what the span is to the platform
(`record`: platform, tenant or forged, from its key; see stage0/ledger/records.py); the check
derives that again from the key and never believes the line. CSV is for people: the columns
below, JSON fields as JSON text; a cell that a spreadsheet would run as a formula (starting
with = + - @, a tab or a CR) is prefixed with `'`, and invisible or direction-changing
characters are written as `\\uXXXX` (stage0/spans/display.py).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stage0.errors import LoglineError
from stage0.ledger import records, store
from stage0.ledger.db import Connection
from stage0.ledger.queries import q
from stage0.spans.canonical import normalise
from stage0.spans.display import visible
from stage0.spans.proofs import check_proofs

EXPORT_MAX = 10_000
COLUMNS = ("position", "id", "seq", "at", "entity_type", "who", "did", "this", "status",
           "owner_id", "tenant_id", "trace_id", "parent_id", "curr_hash", "signature",
           "public_key", "record")
JSON_COLUMNS = ("input", "output", "content")
#: What a spreadsheet reads as the start of a formula (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def rows(conn: Connection, root: str, *, trace_id: str | None = None,
         tenant: str | None = None, types: list[str] | None = None, after: int | None = None,
         limit: int = EXPORT_MAX) -> list[dict[str, Any]]:
    """Oldest first, each with its `position` and `record`. Under the app role row-level
    security decides what may be included and the API names the caller's tenant; the
    operator's CLI (kernel role) names a tenant or none (every tenant)."""
    platform = records.platform(conn, root)
    return [{**span, "position": r["position"], "record": platform.record(span)}
            for r in conn.execute(q("audit_trail"), {"trace_id": trace_id, "tenant": tenant,
                                          "types": types, "after": after, "limit": limit})
            for span in [store.span_from_row(r)]]


def render(spans: Iterable[dict[str, Any]], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(s, sort_keys=True, ensure_ascii=False) + "\n" for s in spans)
    if fmt != "csv":
        raise LoglineError("AUDIT_BAD_FORMAT", "format is jsonl or csv", fmt)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*COLUMNS, *JSON_COLUMNS])
    for s in spans:
        writer.writerow([csv_cell(s.get(c)) for c in COLUMNS] + [
            csv_cell(json.dumps(s[c], sort_keys=True)) if s[c] is not None else ""
            for c in JSON_COLUMNS])
    return buffer.getvalue()


def csv_cell(value: Any) -> str:
    """A CSV cell a person can read and a spreadsheet will not run: invisible characters
    escaped, and a leading formula character defused with `'`."""
    text = "" if value is None else visible(value)
    return "'" + text if text.startswith(FORMULA_START) else text


@dataclass
class ExportCheck:
    spans: int = 0
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (line, id, reason)
    platform: int = 0  # lines signed by a platform key (platform records)
    tenant: int = 0  # lines written by a tenant (not platform records)

    @property
    def ok(self) -> bool:
        return not self.failures


def check_export(lines: Iterable[str], trusted: frozenset[str],
                 platform: records.Platform | None = None) -> ExportCheck:
    """Every line of a JSON-lines export: hash, signature, trusted key; with `platform`,
    also that a platform kind is signed by the platform (KIND_NOT_PLATFORM_SIGNED) and that
    the line's `record` says what its key makes it (RECORD_MISLABELLED)."""
    report = ExportCheck()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        report.spans += 1
        try:
            data = json.loads(line)
            data.pop("position", None)
            claimed = data.pop("record", None)
            span = normalise(data)
        except (ValueError, LoglineError, AttributeError) as exc:
            report.failures.append((number, "?", f"UNREADABLE: {exc}"))
            continue
        reason = _line_problem(span, claimed, trusted, platform)
        if reason:
            report.failures.append((number, span["id"], reason))
        elif platform is not None:
            report.platform += platform.record(span) == records.PLATFORM
            report.tenant += platform.record(span) == records.TENANT
    return report


def _line_problem(span: dict[str, Any], claimed: Any, trusted: frozenset[str],
                  platform: records.Platform | None) -> str | None:
    proofs = check_proofs(span)
    if not proofs.ok:
        return f"{proofs.reason}: {proofs.detail}"
    if span["public_key"] not in trusted:
        return "KEY_UNTRUSTED: signed by a key the manifest does not trust"
    if platform is None:
        return None
    record = platform.record(span)
    if record == records.FORGED:
        return (f"{records.NOT_PLATFORM_SIGNED}: a span of kind {span['entity_type']} signed "
                f"by {span['public_key']}, which is not a platform key")
    if claimed is not None and claimed != record:
        return f"RECORD_MISLABELLED: the line says {claimed!r}, its key makes it {record!r}"
    return None
