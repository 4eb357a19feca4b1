"""schema/schema.sql is what the migrations make (stage0/ledger/schema_dump.py)."""

from __future__ import annotations

import difflib

from stage0.ledger import db, migrate, schema_dump


def test_the_migrations_make_the_schema_schema_sql_shows(
        empty_database: db.Database, one_migration_at_a_time: None, has_pgvector: bool) -> None:
    migrate.migrate(empty_database)
    made = schema_dump.dump(empty_database)
    path = schema_dump.snapshot_path()
    # A server without pgvector (Debian's PostgreSQL 15) has all of it but the vector index.
    expected = path.read_text() if has_pgvector else \
        schema_dump.without_vectors(path.read_text())
    diff = "".join(difflib.unified_diff(expected.splitlines(True),
                                        made.splitlines(True), str(path), "migrated"))
    assert not diff, ("schema/schema.sql is not what the migrations make; regenerate it with "
                      "`python tools/dump_schema.py` (and commit it with the migration):\n"
                      + diff)


def test_the_snapshot_is_not_a_migration() -> None:
    assert schema_dump.snapshot_path().exists()
    assert migrate.SNAPSHOT not in {m.path.name for m in migrate.discover()}
