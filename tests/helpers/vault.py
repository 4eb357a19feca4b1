"""What the vault tests share: a secret value and the ways to look for it where it must never
appear (the database, logs, responses)."""

from __future__ import annotations

import base64
from typing import Any

VALUE = "sk-test-Zq8v3LmN0pRt7WxY2bC5dF9gH1jK4"


def forms(value: str) -> list[str]:
    """The value as an attacker would grep for it: as is, base64 (standard and urlsafe, with
    and without padding), hex (both cases)."""
    raw = value.encode()
    b64 = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    return [value, b64, b64.rstrip("="), url, url.rstrip("="), raw.hex(), raw.hex().upper()]


def assert_nowhere(text: str, value: str = VALUE) -> None:
    for form in forms(value):
        assert form not in text, f"{form!r} found"


def database_text(conn: Any) -> str:
    """Every row of every table of the ledger schema as text (what a pg_dump would hold)."""
    tables = [r["t"] for r in conn.execute(
        "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) AS t "
        "FROM pg_tables WHERE schemaname = 'ledger'")]
    assert "ledger.universal_registry" in tables
    parts = []
    for table in tables:
        # a table name from the catalogue, quoted by PostgreSQL itself: no user input
        parts += [r["j"] for r in conn.execute(f"SELECT row_to_json(x)::text AS j FROM {table} x")]
    return "\n".join(parts)
