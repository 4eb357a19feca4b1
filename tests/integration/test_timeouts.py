"""The roles that serve requests run with statement and idle-in-transaction timeouts
(schema/0006), and the paths that legitimately take longer still work under them: the
request worker's claim and the policy agent's round (idle while the sandbox runs), verify
and seed. The long paths are checked under a per-database limit far below what they need,
so a path that forgot its own allowance fails here in seconds, not in production in
minutes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
from helpers.kernels import add, raw_request, tenant_policy, user_function
from psycopg import sql

from stage0.boot.loader import Loader
from stage0.ledger import seed, store, verify
from stage0.runtime.worker import KERNELS

SPIN_MS = """import datetime


def main(input):
    end = datetime.datetime.now() + datetime.timedelta(milliseconds=input["ms"])
    while datetime.datetime.now() < end:
        pass
    return input
"""
SLOW_POLICY = """import datetime


def main(span):
    end = datetime.datetime.now() + datetime.timedelta(milliseconds=1500)
    while datetime.datetime.now() < end:
        pass
    return [{"emit_span": {"entity_type": "seen"}}]
"""


def setting(conn, name: str) -> str:
    return conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[name]


@pytest.mark.parametrize("role, statement, idle", [("app", "30s", "1min"),
                                                   ("kernel", "5min", "5min")])
def test_the_serving_roles_run_with_timeouts(database, role, statement, idle):
    with database.connect(role) as conn:
        assert setting(conn, "statement_timeout") == statement
        assert setting(conn, "idle_in_transaction_session_timeout") == idle


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_statement_over_the_timeout_is_cancelled_for_the_app_role(database):
    with database.connect("app") as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(31)")
        assert conn.execute("SELECT 1 AS one").fetchone()["one"] == 1  # the session lives on


@pytest.fixture
def tight(seeded) -> Iterator[None]:
    """The kernel role limited to 1 s idle in a transaction and 300 ms per statement, in
    this test's database only (sessions opened from now on)."""
    with seeded.connect("admin") as admin:
        for name, value in (("idle_in_transaction_session_timeout", "1s"),
                            ("statement_timeout", "300ms")):
            admin.execute(sql.SQL("ALTER ROLE logline_kernel IN DATABASE {} SET {} = {}").format(
                sql.Identifier(seeded.dbname), sql.Identifier(name), sql.Literal(value)))
    yield
    with seeded.connect("admin") as admin:
        admin.execute(sql.SQL("ALTER ROLE logline_kernel IN DATABASE {} RESET ALL").format(
            sql.Identifier(seeded.dbname)))


@pytest.mark.slow
def test_a_batch_and_a_round_that_outlast_the_idle_timeout_still_complete(
        seeded, home, kernel_conn, operator, tight):
    fn = user_function(kernel_conn, operator, SPIN_MS)
    requests = [raw_request(kernel_conn, operator, fn["id"], "acme", {"ms": 600})
                for _ in range(3)]
    policy = tenant_policy(kernel_conn, operator, SLOW_POLICY, timeout_ms=5000)
    add(kernel_conn, operator, "note")
    with Loader(seeded, home) as loader:
        assert setting(loader.conn, "idle_in_transaction_session_timeout") == "1s"
        # ~1.8 s of sandbox time while the claim's transaction is idle
        assert loader.boot(KERNELS["request_worker"], {"batch": 8})["claimed"] == 3
        # ~1.5 s of policy code while the round's transaction is idle
        assert loader.boot(KERNELS["policy_agent"], {"batch": 50})["errors"] == 0
    assert {store.head(kernel_conn, r["id"])["status"] for r in requests} == {"complete"}
    assert kernel_conn.execute("SELECT count(*) AS n FROM ledger.universal_registry WHERE "
                               "entity_type = 'seen' AND metadata ->> 'policy_id' = %s",
                               (policy["id"],)).fetchone()["n"] >= 1


@pytest.mark.slow
def test_seed_and_verify_of_a_big_ledger_run_past_the_statement_timeout(
        seeded, home, operator, tmp_path, tight):
    big = tmp_path / "big.ndjson"
    big.write_text("".join(json.dumps({
        "id": f"5eed0000-0000-4000-8000-{i:012x}", "entity_type": "note", "who": "ops",
        "this": f"note {i}", "owner_id": "ops", "tenant_id": "bulk", "visibility": "tenant",
        "content": {"text": "x" * 200}}) + "\n" for i in range(1, 20_001)))
    with seeded.connect("kernel") as conn:
        assert setting(conn, "statement_timeout") == "300ms"
        [result] = seed.seed(conn, [big], operator)
        assert result.appended == 20_000
        assert setting(conn, "statement_timeout") == "300ms"  # the role's own again
        report = verify.verify(conn, home.root_public_key(), jobs=2)
    assert report.ok, report.failures[:3]
    assert report.spans >= 20_000
