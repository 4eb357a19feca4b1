"""Named SQL queries from stage0/sql/queries.sql (`-- name: x` headers), loaded once."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from .canonical import FIELDS

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
#: The span columns as SELECT items that come back in the types normalise() expects.
SPAN_COLUMNS = ", ".join('"this"' if f == "this" else f for f in FIELDS)
R_COLUMNS = ", ".join(f'r."{f}"' for f in FIELDS)


@cache
def _all() -> dict[str, str]:
    text = (Path(__file__).parent / "sql" / "queries.sql").read_text()
    parts = _HEADER.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.startswith("--")]
        queries[name] = "\n".join(lines).replace("{columns}", SPAN_COLUMNS).replace(
            "{r_columns}", R_COLUMNS)
    return queries


def q(name: str) -> str:
    return _all()[name]
