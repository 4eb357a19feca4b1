"""What the LLM, prompt and memory benchmarks share: a fresh ledger for the run, the run's
facts (command, CPUs, load) and the closing report.

    with seeded_ledger("llm") as (home, database, key):
        ...
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stage0 import keys  # noqa: E402
from stage0.config import Home, row_dir  # noqa: E402
from stage0.ledger import db, migrate, seed  # noqa: E402


@contextmanager
def seeded_ledger(label: str) -> Iterator[tuple[Home, db.Database, SigningKey]]:
    """A database of its own, migrated and seeded, with an operator key in a temporary home:
    on the embedded PostgreSQL of that home (stopped and removed afterwards), or on the
    server of LOGLINE_DATABASE_URL (the database dropped afterwards)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"logline-bench-{label}-"))
    if os.geteuid() == 0:  # the embedded server runs as another user: let it traverse (only)
        tmp.chmod(0o711)
    home = Home(tmp / "home")
    external = bool(os.environ.get("LOGLINE_DATABASE_URL"))
    server = db.Database(os.environ["LOGLINE_DATABASE_URL"]) if external else db.embedded(home)
    name = f"logline_bench_{uuid.uuid4().hex[:8]}"
    try:
        with server.connect("admin", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        database = server.with_dbname(name)
        migrate.migrate(database)
        key, _ = keys.ensure_operator_key(home)
        with database.connect("kernel") as conn:
            seed.seed(conn, [row_dir()], key)
        yield home, database, key
    finally:
        try:
            with server.connect("admin", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            if not external:
                db.stop_embedded(home)
            shutil.rmtree(tmp, ignore_errors=True)


def run_facts(script: str, argv: list[str] | None) -> dict[str, Any]:
    """The run's command line and machine, printed and kept with its figures."""
    return {"command": f"python tools/{script} " + " ".join(argv or sys.argv[1:]),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg()}


def finish(results: dict[str, Any], report: Callable[[dict[str, Any]], None],
           json_path: Path | None) -> int:
    """Note the load at the end, print the report, and keep the figures when asked."""
    results["meta"]["load_avg_at_end"] = os.getloadavg()
    report(results)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
    return 0
