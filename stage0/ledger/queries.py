"""Named SQL queries from stage0/ledger/sql/queries.sql (`-- name: x` headers), loaded once."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from stage0.spans.canonical import FIELDS

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
#: The span columns as SELECT items that come back in the types normalise() expects.
SPAN_COLUMNS = ", ".join('"this"' if f == "this" else f for f in FIELDS)
R_COLUMNS = ", ".join(f'r."{f}"' for f in FIELDS)
#: `at` as canonical.format_at writes it, when the stored value can be written that way at
#: all (milliseconds, years 1-9999); anything else comes back as PostgreSQL's own text, which
#: no signed span holds, so verify names the row instead of rounding the difference away.
_AT_TEXT = ("CASE WHEN at = date_trunc('milliseconds', at) "
            "AND at >= '0001-01-01 00:00:00+00' AND at < '10000-01-01 00:00:00+00' "
            """THEN to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') """
            "ELSE at::text END")
_AS_TEXT = {"id": "id::text", "parent_id": "parent_id::text",
            "related_to": "related_to::text[]", "at": _AT_TEXT}
#: The span columns with ids, `at` and related_to converted to the text a span holds (as
#: ledger.span_from_row would), by PostgreSQL.
TEXT_COLUMNS = ", ".join(f"{_AS_TEXT[f]} AS {f}" if f in _AS_TEXT else
                         '"this"' if f == "this" else f for f in FIELDS)


@cache
def _all() -> dict[str, str]:
    text = (Path(__file__).parent / "sql" / "queries.sql").read_text()
    parts = _HEADER.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.startswith("--")]
        queries[name] = "\n".join(lines).replace("{columns}", SPAN_COLUMNS).replace(
            "{r_columns}", R_COLUMNS).replace("{text_columns}", TEXT_COLUMNS)
    return queries


def q(name: str) -> str:
    return _all()[name]
