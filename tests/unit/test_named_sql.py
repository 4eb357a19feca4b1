"""SQL has names: every statement lives in stage0/ledger/sql/*.sql under `-- name:` with a
description, and nothing outside stage0/ledger/ writes SQL or imports the driver (no
database needed)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO

from stage0.ledger import queries

STAGE0 = REPO / "stage0"
LEDGER = STAGE0 / "ledger"
#: How a string that holds SQL starts (keywords as the code writes them: upper case), or a
#: call that only SQL makes, anywhere in it.
SQL_START = re.compile(
    r"^\s*(SELECT|INSERT\s+INTO|UPDATE|DELETE\s+FROM|WITH|COPY|LISTEN|UNLISTEN|NOTIFY|"
    r"BEGIN|COMMIT|ROLLBACK|SAVEPOINT|SET|RESET|SHOW|CREATE|ALTER|DROP|GRANT|REVOKE|TRUNCATE|"
    r"LOCK|EXPLAIN|VACUUM|ANALYZE|CALL|DO|VALUES|TABLE|PREPARE|EXECUTE|DEALLOCATE)(\s|;|$)")
SQL_ANYWHERE = re.compile(r"\b(set_config|pg_advisory\w*|pg_notify|current_setting)\s*\(|"
                          r"\bFROM\s+(ledger|logline_meta|pg_catalog)\.")
DRIVER = ("psycopg", "psycopg_pool", "psycopg2")
CALL = re.compile(r"""\bq\(\s*["'](\w+)["']\s*\)""")


def outside_ledger() -> list[Path]:
    return sorted(p for p in STAGE0.rglob("*.py") if LEDGER not in p.parents)


def docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every string literal (an f-string as its literal parts joined), docstrings left out."""
    skip = docstrings(tree)
    parts: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            pieces = [v for v in node.values if isinstance(v, ast.Constant)]
            parts.update(id(v) for v in pieces)
            yield node.lineno, "{}".join(str(v.value) for v in pieces)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in skip and id(node) not in parts:
            yield node.lineno, node.value


def looks_like_sql(text: str) -> bool:
    return bool(SQL_START.match(text) or SQL_ANYWHERE.search(text))


def test_the_detector_knows_sql_from_prose() -> None:
    for sql in ("SELECT 1", "  INSERT INTO t VALUES (1)", "LISTEN timeline_updates", "BEGIN",
                "COMMIT", "WITH x AS (SELECT 1) SELECT * FROM x", "RESET ROLE",
                "select set_config('app.user_id', %s, true)", "x FROM ledger.span_heads"):
        assert looks_like_sql(sql), sql
    for prose in ("Select a span", "SELECTED", "Lock up to `batch` requests", "set up",
                  "Set public_key, curr_hash", "created", "WITHOUT", "Do it"):
        assert not looks_like_sql(prose), prose


def test_no_sql_outside_the_ledger_package() -> None:
    found = [f"{path.relative_to(REPO)}:{line}: {text.strip()[:70]!r}"
             for path in outside_ledger()
             for line, text in strings(ast.parse(path.read_text(), str(path)))
             if looks_like_sql(text)]
    assert not found, ("SQL outside stage0/ledger/: name it in stage0/ledger/sql/*.sql and run "
                       "it with q(name), or a function of stage0/ledger/:\n" + "\n".join(found))


def test_only_the_ledger_package_imports_the_driver() -> None:
    found = []
    for path in outside_ledger():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [node.attr] if isinstance(node, ast.Attribute) else []
            if any(n.split(".")[0] in DRIVER for n in names):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, ("the driver outside stage0/ledger/ (use stage0.ledger.db's Connection, "
                       "DatabaseError, OperationalError, QueryCanceled): " + ", ".join(found))


def test_every_statement_has_a_unique_name_and_a_description() -> None:
    every = queries.queries()  # refuses a statement without a description, a name used twice
    assert every
    for query in every.values():
        assert query.description and not query.description.startswith("name:"), query.name
        assert not re.search(r"\{(r_)?(columns|text_columns|span_json)\b", query.sql), query.name


def test_a_statement_without_a_description_or_a_name_used_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="x has no `-- description` line"):
        queries.parse("-- name: x\nSELECT 1\n", "t.sql")
    with pytest.raises(ValueError, match="SQL before the first"):
        queries.parse("SELECT 1\n-- name: x\n-- one\nSELECT 1\n", "t.sql")
    [one] = queries.parse("-- file\n\n-- name: x\n-- The one.\n-- more\nSELECT {columns:r}\n",
                          "t.sql")
    assert (one.name, one.description) == ("x", "The one.")
    assert one.sql.startswith('SELECT r."id", ')


def used_names(*roots: Path) -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for match in CALL.finditer(path.read_text()):
                used.setdefault(match.group(1), []).append(str(path.relative_to(REPO)))
    return used


def test_every_named_statement_is_used_and_every_use_names_one() -> None:
    named = set(queries.queries())
    in_code = used_names(STAGE0)
    assert not named - set(in_code), f"unused named statements: {sorted(named - set(in_code))}"
    everywhere = used_names(STAGE0, REPO / "tools", REPO / "tests")
    unknown = {n: where for n, where in everywhere.items() if n not in named}
    assert not unknown, f"q() of names no .sql file has: {unknown}"
