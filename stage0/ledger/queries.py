"""Every SQL statement LogLine runs, by name: the `.sql` files of stage0/ledger/sql/, read once.

Each statement in those files starts with a header and a one-line description,

    -- name: head_lookup
    -- The latest version of one span (under the app role, as the caller may see it).
    SELECT {columns}, position FROM ledger.latest_spans WHERE id = %(id)s

and more comment lines after the description if it needs them. Code outside stage0/ledger/
runs a statement as `conn.execute(q("head_lookup"), {...})` and never holds SQL of its own
(tests/unit/test_named_sql.py checks both). What must be built at run time (a multi-row VALUES
list, COPY with the column list) is built in stage0/ledger/store.py.

Placeholders filled in when the files are read, from the span's fields (spans/canonical.py):
`{columns}` the span columns as SELECT items in the types store.span_from_row expects,
`{columns:r}` the same qualified by the alias r, `{text_columns}` with ids, `at` and
related_to as the text a span holds, and `{span_json}` the json_build_object arguments of a
span as GET /api/spans/{id} returns it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from stage0.spans.canonical import FIELDS

SQL_DIR = Path(__file__).parent / "sql"
_HEADER = re.compile(r"^-- name: (\w+)[ \t]*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{(columns|text_columns|span_json)(?::(\w+))?\}")

#: The span columns as SELECT items that come back in the types normalise() expects.
SPAN_COLUMNS = ", ".join('"this"' if f == "this" else f for f in FIELDS)
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
#: A span's fields as json_build_object arguments, `at` in the format a span holds.
_SPAN_JSON = ", ".join(
    f"'{f}', " + ("""to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""
                  if f == "at" else f'"{f}"') for f in FIELDS)


@dataclass(frozen=True)
class Query:
    name: str
    description: str  # the first comment line under the name
    sql: str  # ready to run: comments dropped, placeholders filled
    file: str


def _fill(match: re.Match[str]) -> str:
    what, alias = match.group(1), match.group(2)
    if what == "columns":
        return ", ".join(f'{alias}."{f}"' for f in FIELDS) if alias else SPAN_COLUMNS
    if alias:
        raise ValueError(f"{{{what}}} takes no alias")
    return TEXT_COLUMNS if what == "text_columns" else _SPAN_JSON


def parse(text: str, file: str) -> list[Query]:
    """The named statements of one file. Text before the first name is the file's preamble
    (comments only); a statement without a description is refused."""
    parts = _HEADER.split(text)
    if any(line.strip() and not line.startswith("--") for line in parts[0].splitlines()):
        raise ValueError(f"{file}: SQL before the first `-- name:` header")
    found = []
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = body.strip().splitlines()
        if not lines or not lines[0].startswith("-- ") or not lines[0][3:].strip():
            raise ValueError(f"{file}: query {name} has no `-- description` line")
        sql = "\n".join(ln for ln in lines if not ln.startswith("--")).strip()
        if not sql:
            raise ValueError(f"{file}: query {name} has no SQL")
        found.append(Query(name, lines[0][3:].strip(), _PLACEHOLDER.sub(_fill, sql), file))
    return found


@cache
def queries() -> dict[str, Query]:
    """Every named statement of stage0/ledger/sql/*.sql; a name used twice is refused."""
    out: dict[str, Query] = {}
    for path in sorted(SQL_DIR.glob("*.sql")):
        for query in parse(path.read_text(), path.name):
            if query.name in out:
                raise ValueError(f"{path.name}: query {query.name} is already named in "
                                 f"{out[query.name].file}")
            out[query.name] = query
    return out


def q(name: str) -> str:
    """The SQL of the statement `name`, ready to run."""
    return queries()[name].sql
