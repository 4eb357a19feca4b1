"""Edits behind the ledger's back, as a database administrator could make them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stage0.ledger import db


def tamper(database: db.Database, sql: str, params: dict[str, Any] | None = None) -> int:
    """Run one statement as a superuser with the ledger's triggers switched off."""
    with database.connect("admin") as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                            ).fetchone()["rolsuper"]
        conn.execute("SET session_replication_role = replica")
        rows = conn.execute(sql, params or {}).rowcount
        conn.commit()
    assert rows >= 1, f"the tampering statement changed nothing: {sql}"
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """An NDJSON file of these rows, as `logline sign` and `logline seed` read them."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def count_spans(database: db.Database) -> int:
    """Every stored version of every span, whoever may read it."""
    with database.connect("kernel") as conn:
        return conn.execute("SELECT count(*) AS n FROM ledger.universal_registry").fetchone()["n"]
