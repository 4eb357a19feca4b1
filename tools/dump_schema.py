"""Regenerate schema/schema.sql: migrate a fresh database and dump its ledger schema
(stage0/ledger/schema_dump.py). `--check` only says whether the file is current.

The database is made on LOGLINE_DATABASE_URL's server when it is set, else on a throwaway
embedded server in a temporary directory, and dropped again.
"""

import argparse
import difflib
import os
import sys
import tempfile
import uuid
from pathlib import Path

from psycopg import sql

from stage0.config import Home
from stage0.ledger import db, migrate, schema_dump


def current(server: db.Database) -> str:
    name = f"logline_schema_{uuid.uuid4().hex[:12]}"
    with server.connect("admin") as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        fresh = server.with_dbname(name)
        migrate.migrate(fresh)
        return schema_dump.dump(fresh)
    finally:
        with server.connect("admin") as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args()
    url = os.environ.get("LOGLINE_DATABASE_URL")
    if url:
        text = current(db.Database(url))
    else:
        with tempfile.TemporaryDirectory(prefix="logline-schema-") as tmp:
            if os.geteuid() == 0:  # the embedded server runs as another user: traverse only
                Path(tmp).chmod(0o711)
            home = Home(Path(tmp))
            try:
                text = current(db.embedded(home))
            finally:
                db.stop_embedded(home)
    path = schema_dump.snapshot_path()
    old = path.read_text() if path.exists() else ""
    if args.check:
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                   str(path), "migrations"))
        return 0 if old == text else 1
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
