"""What PostgreSQL itself guarantees about the ledger, tested with the real roles.

`app` is logline_app (RLS forced, not the owner), `kernel` is logline_kernel (BYPASSRLS),
`admin` is a superuser. Spans are written through stage0.ledger where the role can use it, and
with plain INSERT (`sql_insert`) where a test must reach the database's own checks without the
Python layer in front of them.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from nacl.signing import SigningKey
from psycopg.types.json import Jsonb

from stage0.config import schema_dir
from stage0.errors import LoglineError
from stage0.ledger import db, migrate, store, verify
from stage0.ledger.manifest import MANIFEST_ID
from stage0.spans.canonical import FIELDS, JSON_FIELDS, normalise, now_at
from stage0.spans.proofs import public_key_hex, seal

ROLES = ("app", "kernel")
APPEND_LOCK_KEY = 5514346441049466213
TABLE = "ledger.universal_registry"


# ---------------------------------------------------------------------------------- helpers

def draft(**fields: Any) -> dict[str, Any]:
    base = {"entity_type": "note", "who": "tester", "this": "a note", "owner_id": "alice",
            "tenant_id": "A"}
    return {**base, **fields}


def sealed(key: SigningKey, **fields: Any) -> dict[str, Any]:
    """A correctly hashed and signed span, built without stage0.ledger (no chaining)."""
    fields.setdefault("id", str(uuid.uuid4()))
    fields.setdefault("at", now_at())
    return seal(normalise(draft(**fields)), key)


def next_version(key: SigningKey, prev: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The correctly chained and signed next version of `prev`, with `changes` applied."""
    content = {f: v for f, v in prev.items()
               if f not in ("seq", "prev_hash", "curr_hash", "signature", "public_key", "at")}
    content.update(changes)
    content.setdefault("seq", prev["seq"] + 1)
    content.setdefault("prev_hash", prev["curr_hash"])
    content["at"] = now_at()
    return seal(normalise(content), key)


_INSERT = (f"INSERT INTO {TABLE} ({', '.join(chr(34) + f + chr(34) for f in FIELDS)}) "
           f"VALUES ({', '.join(['%s'] * len(FIELDS))})")


def sql_insert(conn: psycopg.Connection, span: dict[str, Any]) -> None:
    """Insert one span with a plain INSERT (RLS and the triggers decide); refusals come back
    as LoglineError with the database's reason code, like stage0.ledger.store.insert."""
    values = [Jsonb(span[f]) if f in JSON_FIELDS and span[f] is not None else span[f]
              for f in FIELDS]
    try:
        with conn.transaction():
            conn.execute(_INSERT, values)
    except psycopg.Error as exc:
        raise db.db_error(exc) from None


def kernel_insert(conn: psycopg.Connection, span: dict[str, Any]) -> None:
    """stage0.ledger.store.insert (COPY) in its own transaction or savepoint."""
    with conn.transaction():
        store.insert(conn, [span])


def head_row(conn: psycopg.Connection, span_id: str) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM ledger.span_heads WHERE id = %s", (span_id,)).fetchone()


def stored(conn: psycopg.Connection, span_id: str) -> list[dict[str, Any]]:
    return conn.execute(f"SELECT id::text AS id, seq, prev_hash, curr_hash, position, who "
                        f"FROM {TABLE} WHERE id = %s ORDER BY seq", (span_id,)).fetchall()


def assert_linear(conn: psycopg.Connection, span_id: str, versions: int) -> list[dict]:
    rows = stored(conn, span_id)
    assert [r["seq"] for r in rows] == list(range(versions))
    assert rows[0]["prev_hash"] is None
    for before, after in zip(rows, rows[1:], strict=False):
        assert after["prev_hash"] == before["curr_hash"]
        assert after["position"] > before["position"]
    head = head_row(conn, span_id)
    assert (head["seq"], head["curr_hash"]) == (rows[-1]["seq"], rows[-1]["curr_hash"])
    return rows


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll a database state (e.g. a backend waiting in pg_locks) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def kernel(seeded: db.Database) -> Iterator[psycopg.Connection]:
    with seeded.connect("kernel") as conn:
        yield conn


@pytest.fixture
def role_conn(request: pytest.FixtureRequest, seeded: db.Database) -> Iterator[psycopg.Connection]:
    with seeded.connect(request.param, autocommit=True) as conn:
        yield conn


def manifest_row(database: db.Database) -> dict[str, Any]:
    with database.connect("admin") as conn:
        return conn.execute(f"SELECT * FROM {TABLE} WHERE id = %s AND seq = 0",
                            (MANIFEST_ID,)).fetchone()


# ------------------------------------------------------------- append-only and privileges

@pytest.mark.parametrize("role_conn", ROLES, indirect=True)
@pytest.mark.parametrize("statement", [
    f"UPDATE {TABLE} SET status = 'hacked' WHERE id = %(id)s",
    f"UPDATE {TABLE} SET status = 'hacked'",
])
def test_roles_cannot_update(role_conn, seeded, statement):
    before = manifest_row(seeded)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        role_conn.execute(statement, {"id": MANIFEST_ID})
    assert manifest_row(seeded) == before


@pytest.mark.parametrize("role_conn", ROLES, indirect=True)
def test_roles_cannot_delete(role_conn, seeded):
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        role_conn.execute(f"DELETE FROM {TABLE} WHERE id = %s", (MANIFEST_ID,))
    assert manifest_row(seeded) is not None


@pytest.mark.parametrize("role_conn", ROLES, indirect=True)
def test_roles_cannot_truncate(role_conn, seeded):
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        role_conn.execute(f"TRUNCATE {TABLE}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        role_conn.execute(f"TRUNCATE {TABLE} CASCADE")
    assert manifest_row(seeded) is not None


@pytest.mark.parametrize("role_conn", ROLES, indirect=True)
@pytest.mark.parametrize("statement", [
    f"ALTER TABLE {TABLE} DISABLE TRIGGER ALL",
    f"ALTER TABLE {TABLE} DISABLE TRIGGER USER",
    f"ALTER TABLE {TABLE} DISABLE TRIGGER ur_no_update_delete",
    f"ALTER TABLE {TABLE} DISABLE TRIGGER ur_append",
    f"DROP TRIGGER ur_no_truncate ON {TABLE}",
    f"ALTER TABLE {TABLE} NO FORCE ROW LEVEL SECURITY",
    f"ALTER TABLE {TABLE} DISABLE ROW LEVEL SECURITY",
    "DROP POLICY span_read ON ledger.universal_registry",
    "ALTER TABLE ledger.span_heads DISABLE ROW LEVEL SECURITY",
])
def test_roles_cannot_disable_triggers_or_rls(role_conn, seeded, statement):
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must be owner"):
        role_conn.execute(statement)
    with seeded.connect("admin") as admin:
        triggers = admin.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s::regclass "
            "AND NOT tgisinternal ORDER BY tgname", (TABLE,)).fetchall()
    assert {t["tgname"]: t["tgenabled"] for t in triggers} == {
        "ur_append": "O", "ur_no_truncate": "O", "ur_no_update_delete": "O",
        "ur_after_append": "O"}


@pytest.mark.parametrize("role_conn", ROLES, indirect=True)
@pytest.mark.parametrize("statement", [
    "SET session_replication_role = replica",
    "SET session_replication_role = local",
    "SELECT set_config('session_replication_role', 'replica', false)",
])
def test_roles_cannot_set_session_replication_role(role_conn, statement):
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        role_conn.execute(statement)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), role_conn.transaction():
        role_conn.execute("SET LOCAL session_replication_role = replica")
    assert role_conn.execute("SHOW session_replication_role").fetchone()[
        "session_replication_role"] == "origin"


@pytest.mark.parametrize("role_conn", ROLES, indirect=True)
@pytest.mark.parametrize("statement", [
    "INSERT INTO ledger.span_heads VALUES (gen_random_uuid(), 0, repeat('a', 64), 1, 'note', "
    "NULL, 'alice', 'A', 'public', false, now())",
    "UPDATE ledger.span_heads SET status = 'hacked'",
    "UPDATE ledger.span_heads SET seq = seq + 1 WHERE id = %(id)s",
    "DELETE FROM ledger.span_heads WHERE id = %(id)s",
    "TRUNCATE ledger.span_heads",
])
def test_roles_cannot_write_span_heads(role_conn, seeded, statement):
    with seeded.connect("admin") as admin:
        before = admin.execute("SELECT * FROM ledger.span_heads ORDER BY id").fetchall()
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        role_conn.execute(statement, {"id": MANIFEST_ID})
    with seeded.connect("admin") as admin:
        assert admin.execute("SELECT * FROM ledger.span_heads ORDER BY id").fetchall() == before


@pytest.mark.parametrize("role_conn", ROLES, indirect=True)
@pytest.mark.parametrize("statement", [
    "SELECT setval('ledger.position_seq', 1)",
    "SELECT nextval('ledger.position_seq')",
    "ALTER SEQUENCE ledger.position_seq RESTART",
])
def test_roles_cannot_move_the_position_sequence(role_conn, seeded, statement):
    with seeded.connect("admin") as admin:
        before = admin.execute("SELECT last_value FROM ledger.position_seq").fetchone()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        role_conn.execute(statement)
    with seeded.connect("admin") as admin:
        assert admin.execute("SELECT last_value FROM ledger.position_seq").fetchone() == before


@pytest.mark.parametrize("role_conn", ROLES, indirect=True)
def test_roles_are_neither_superuser_nor_owner(role_conn, request):
    role = db.ROLE_NAMES[request.node.callspec.params["role_conn"]]
    me = role_conn.execute("SELECT current_user AS u").fetchone()["u"]
    assert me == role
    attrs = role_conn.execute("SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, "
                              "rolreplication FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    assert attrs == {"rolsuper": False, "rolbypassrls": role == "logline_kernel",
                     "rolcreaterole": False, "rolcreatedb": False, "rolreplication": False}
    owned = role_conn.execute(
        "SELECT c.relname, pg_get_userbyid(c.relowner) AS owner FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'ledger' "
        "AND c.relkind IN ('r', 'v', 'S', 'i')").fetchall()
    assert {o["relname"] for o in owned} >= {"universal_registry", "span_heads",
                                             "visible_timeline", "latest_spans", "position_seq"}
    assert {o["owner"] for o in owned} == {"logline_owner"}
    functions = role_conn.execute(
        "SELECT p.proname, pg_get_userbyid(p.proowner) AS owner FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'ledger'").fetchall()
    assert functions and {f["owner"] for f in functions} == {"logline_owner"}
    schema_owner = role_conn.execute("SELECT pg_get_userbyid(nspowner) AS o FROM pg_namespace "
                                     "WHERE nspname = 'ledger'").fetchone()["o"]
    assert schema_owner == "logline_owner"
    member = role_conn.execute("SELECT pg_has_role(current_user, 'logline_owner', 'MEMBER') AS m"
                               ).fetchone()["m"]
    assert member is False
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        role_conn.execute("SET ROLE logline_owner")


@pytest.mark.parametrize("statement", [
    f"UPDATE {TABLE} SET status = 'hacked' WHERE id = %(id)s",
    f"DELETE FROM {TABLE} WHERE id = %(id)s",
    f"TRUNCATE {TABLE}",
])
def test_superuser_refused_while_triggers_are_on(seeded, statement):
    before = manifest_row(seeded)
    with seeded.connect("admin", autocommit=True) as admin:
        assert admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                             ).fetchone()["rolsuper"] is True
        with pytest.raises(psycopg.Error, match="LEDGER_APPEND_ONLY") as err:
            admin.execute(statement, {"id": MANIFEST_ID})
    assert err.value.diag.sqlstate == "LL002"
    assert manifest_row(seeded) == before


# ------------------------------------------------------------------------ row-level security

#: name -> (owner, tenant, visibility, is_deleted, versions)
RLS_SPANS = {
    "a_private": ("alice", "A", "private", False, 2),
    "a_tenant": ("alice", "A", "tenant", False, 1),
    "a_public": ("alice", "A", "public", False, 1),
    "a_bob_private": ("bob", "A", "private", False, 1),
    "b_private": ("carol", "B", "private", False, 1),
    "b_tenant": ("carol", "B", "tenant", False, 1),
    "b_alice_private": ("alice", "B", "private", False, 1),
    "a_public_deleted": ("alice", "A", "public", True, 1),
}
COMMON = {"manifest", "a_public", "a_public_deleted"}
#: (user, tenant) -> names visible to them (None: no identity set at all).
RLS_EXPECTED = {
    ("alice", "A"): COMMON | {"a_private", "a_tenant"},
    ("bob", "A"): COMMON | {"a_tenant", "a_bob_private"},
    ("carol", "B"): COMMON | {"b_private", "b_tenant"},
    ("alice", "B"): COMMON | {"b_tenant", "b_alice_private"},
    ("alice", None): COMMON,
    ("dave", "C"): COMMON,
    None: COMMON,
}


@pytest.fixture
def tenants(seeded: db.Database, operator: SigningKey) -> dict[str, str]:
    """Spans of tenants A and B (written by the kernel); returns name -> id."""
    ids = {"manifest": MANIFEST_ID}
    with seeded.connect("kernel") as conn:
        batch = []
        for name, (owner, tenant, visibility, deleted, versions) in RLS_SPANS.items():
            ids[name] = str(uuid.uuid4())
            for v in range(versions):
                batch.append(draft(id=ids[name], this=f"{name} v{v}", owner_id=owner,
                                   tenant_id=tenant, visibility=visibility, is_deleted=deleted))
        store.append(conn, batch, operator)
    return ids


@pytest.fixture
def seed_rows(seeded: db.Database) -> list[dict[str, Any]]:
    """Every row ROW/ seeded (kernels, manifest...), as the kernel sees them."""
    with seeded.connect("kernel") as conn:
        return conn.execute(f"SELECT id::text AS id, seq, owner_id, tenant_id, visibility, "
                            f"is_deleted FROM {TABLE}").fetchall()


def _policy_allows(row: dict[str, Any], identity: tuple[str, str | None] | None) -> bool:
    """Facts section 2, for rows this test did not write itself."""
    user, tenant = identity or (None, None)
    return row["visibility"] == "public" or (
        tenant is not None and row["tenant_id"] == tenant
        and (row["visibility"] == "tenant" or row["owner_id"] == user))


RELATIONS = {
    "universal_registry": ("SELECT id::text AS id, seq FROM ledger.universal_registry", False),
    "visible_timeline": ("SELECT id::text AS id, seq FROM ledger.visible_timeline", False),
    "latest_spans": ("SELECT id::text AS id, seq FROM ledger.latest_spans", True),
    "span_heads": ("SELECT id::text AS id, seq FROM ledger.span_heads", True),
}


@pytest.mark.parametrize("relation", RELATIONS)
def test_rls_each_identity_sees_exactly_its_spans(seeded, seed_rows, tenants, relation):
    sql, one_per_id = RELATIONS[relation]
    by_id = {v: k for k, v in tenants.items() if k != "manifest"}
    seeded_ids = {r["id"] for r in seed_rows}
    assert MANIFEST_ID in seeded_ids and seeded_ids.isdisjoint(by_id)
    with seeded.connect("app") as conn:
        for identity, expected in RLS_EXPECTED.items():
            if relation == "visible_timeline":
                expected = expected - {"a_public_deleted"}
            if identity is None:
                with conn.transaction():
                    rows = conn.execute(sql).fetchall()
            else:
                with db.as_identity(conn, *identity):
                    rows = conn.execute(sql).fetchall()
            where = f"{identity} through ledger.{relation}"
            mine = [by_id[r["id"]] for r in rows if r["id"] in by_id]
            assert set(mine) | {"manifest"} == expected, where
            assert {r["id"] for r in rows} <= seeded_ids | set(by_id), where
            if one_per_id:
                assert len(rows) == len({r["id"] for r in rows}), f"{where}: one row per id"
                assert len(mine) == len(expected) - 1, where
            else:
                versions = sum(RLS_SPANS[n][4] for n in expected if n in RLS_SPANS)
                assert len(mine) == versions, f"{where}: every version"
            # Rows seeded from ROW/ follow the same rules (the manifest is public).
            candidates = seed_rows
            if one_per_id:
                latest = {r["id"]: r for r in sorted(seed_rows, key=lambda r: r["seq"])}
                candidates = list(latest.values())
            want = {(r["id"], r["seq"]) for r in candidates if _policy_allows(r, identity)
                    and not (relation == "visible_timeline" and r["is_deleted"])}
            assert MANIFEST_ID in {i for i, _ in want}
            assert {(r["id"], r["seq"]) for r in rows if r["id"] in seeded_ids} == want, where


def test_rls_kernel_and_superuser_see_everything(seeded, tenants):
    seen = {}
    for role in ("kernel", "admin"):
        with seeded.connect(role) as conn:
            seen[role] = {r["id"] for r in conn.execute(RELATIONS["universal_registry"][0])}
    assert seen["kernel"] == seen["admin"]
    assert seen["kernel"] >= set(tenants.values())


def test_rls_identity_does_not_outlive_its_transaction(seeded, tenants):
    private = tenants["a_private"]
    sql = f"SELECT count(*) AS n FROM {TABLE} WHERE id = %s"
    with seeded.connect("app") as conn:
        before = conn.execute("SELECT current_setting('app.user_id', true) AS u").fetchone()["u"]
        assert before is None
        assert conn.execute(sql, (private,)).fetchone()["n"] == 0
        conn.commit()
        with db.as_identity(conn, "alice", "A"):
            assert conn.execute(sql, (private,)).fetchone()["n"] == 2
        # Same connection, next transaction: nothing of alice's identity is left.
        settings = conn.execute("SELECT current_setting('app.user_id', true) AS u, "
                                "current_setting('app.tenant_id', true) AS t").fetchone()
        assert settings["u"] in (None, "") and settings["t"] in (None, "")
        assert conn.execute(sql, (private,)).fetchone()["n"] == 0
        visible = {r["id"] for r in conn.execute(RELATIONS["latest_spans"][0])}
        assert visible & set(tenants.values()) == {tenants[n] for n in COMMON}
        conn.rollback()
        # Even an identity set inside a rolled-back transaction does not stick.
        with pytest.raises(RuntimeError), db.as_identity(conn, "alice", "A"):
            raise RuntimeError("abort")
        assert conn.execute(sql, (private,)).fetchone()["n"] == 0


def test_rls_app_inserts_only_as_itself(seeded, operator):
    with seeded.connect("app") as conn:
        with db.as_identity(conn, "alice", "A"):
            for other in ({"owner_id": "bob"}, {"tenant_id": "B"},
                          {"owner_id": "bob", "tenant_id": "B"}, {"owner_id": None}):
                span = sealed(operator, **other)
                with pytest.raises(LoglineError) as err:
                    sql_insert(conn, span)
                assert err.value.code == "LEDGER_FORBIDDEN", other
                assert "row-level security" in err.value.message
            mine = sealed(operator, visibility="private")
            sql_insert(conn, mine)
        with conn.transaction():  # no identity at all
            with pytest.raises(LoglineError) as err:
                sql_insert(conn, sealed(operator, visibility="public"))
            assert err.value.code == "LEDGER_FORBIDDEN"
    with seeded.connect("kernel") as k:
        owners = k.execute(f"SELECT id::text AS id, owner_id, tenant_id FROM {TABLE} "
                           "WHERE tenant_id IS DISTINCT FROM 'system'").fetchall()
    assert owners == [{"id": mine["id"], "owner_id": "alice", "tenant_id": "A"}]


def test_app_role_appends_through_ledger_append(seeded, operator):
    with seeded.connect("app") as conn:
        with db.as_identity(conn, "alice", "A"):
            [span] = store.append(conn, [draft(visibility="tenant")], operator)
        with db.as_identity(conn, "bob", "A"):
            assert store.head(conn, span["id"]) == span
        with db.as_identity(conn, "alice", "A"):
            [v1] = store.append(conn, [draft(id=span["id"], status="edited")], operator)
        assert v1["seq"] == 1
        batch = [draft(this=f"bulk {i}") for i in range(100)]
        with db.as_identity(conn, "alice", "A"):
            stored_batch = store.append(conn, batch, operator)
            assert len(stored_batch) == 100
            n = conn.execute(f"SELECT count(*) AS n FROM {TABLE} WHERE \"this\" LIKE 'bulk %%'"
                             ).fetchone()["n"]
        assert n == 100


# ------------------------------------------------------------- version chain inside PostgreSQL

@pytest.fixture
def chained(kernel, operator) -> dict[str, Any]:
    """A span with two versions, appended by the kernel; returns its latest version."""
    span_id = str(uuid.uuid4())
    store.append(kernel, [draft(id=span_id, status="v0"), draft(id=span_id, status="v1")],
                  operator)
    return store.head(kernel, span_id)


def _refused(conn: psycopg.Connection, span: dict, code: str, insert=kernel_insert) -> None:
    with pytest.raises(LoglineError) as err:
        insert(conn, span)
    assert err.value.code == code, str(err.value)
    assert span["id"] in err.value.message


def test_chain_new_id_must_start_at_seq_0(kernel, operator):
    span = sealed(operator, seq=1, prev_hash="ab" * 32)
    _refused(kernel, span, "LEDGER_SEQ_GAP")
    assert head_row(kernel, span["id"]) is None and stored(kernel, span["id"]) == []


def test_chain_seq_gap_refused(kernel, operator, chained):
    gap = next_version(operator, chained, seq=chained["seq"] + 2)
    _refused(kernel, gap, "LEDGER_SEQ_GAP")
    assert head_row(kernel, chained["id"])["seq"] == 1


@pytest.mark.parametrize("seq", [0, 1])
def test_chain_existing_seq_refused(kernel, operator, chained, seq):
    versions = store.versions(kernel, chained["id"])
    prev = versions[seq - 1] if seq else None
    again = (next_version(operator, prev, this="fork") if prev
             else sealed(operator, id=chained["id"], this="fork"))
    assert again["seq"] == seq
    _refused(kernel, again, "LEDGER_SEQ_CONFLICT")
    assert store.versions(kernel, chained["id"]) == versions


def test_chain_prev_hash_mismatch_refused(kernel, operator, chained):
    first = store.versions(kernel, chained["id"])[0]
    wrong = next_version(operator, chained, prev_hash=first["curr_hash"])
    _refused(kernel, wrong, "LEDGER_PREV_HASH_MISMATCH")
    _refused(kernel, next_version(operator, chained, prev_hash="0" * 64),
             "LEDGER_PREV_HASH_MISMATCH")
    assert head_row(kernel, chained["id"])["curr_hash"] == chained["curr_hash"]


@pytest.mark.parametrize("change", [{"owner_id": "mallory"}, {"tenant_id": "B"},
                                    {"entity_type": "function"}, {"owner_id": None},
                                    {"tenant_id": None}])
def test_chain_ownership_change_refused(kernel, operator, chained, change):
    _refused(kernel, next_version(operator, chained, **change), "LEDGER_OWNERSHIP_CHANGE")
    assert head_row(kernel, chained["id"])["seq"] == 1
    # The same version without the change is accepted: only the change was refused.
    kernel_insert(kernel, next_version(operator, chained))
    kernel.commit()
    assert head_row(kernel, chained["id"])["seq"] == 2


def test_chain_tenant_b_cannot_append_to_a_public_system_span(seeded, operator):
    intruder = SigningKey.generate()
    with seeded.connect("app") as conn:
        with db.as_identity(conn, "carol", "B"):
            # The public manifest is readable, so carol knows its head and hash ...
            current = store.head(conn, MANIFEST_ID)
            assert current is not None and current["owner_id"] == "system"
            # ... but a version that moves it into her ownership is refused by the trigger,
            hijack = next_version(intruder, current, owner_id="carol", tenant_id="B",
                                  metadata={"trusted_keys": [{"name": "carol", "public_key":
                                                              public_key_hex(intruder)}]})
            _refused(conn, hijack, "LEDGER_OWNERSHIP_CHANGE", insert=sql_insert)
            # and one that keeps the system owner is refused by row-level security.
            forged = next_version(intruder, current, status="hijacked")
            with pytest.raises(LoglineError) as err:
                sql_insert(conn, forged)
            assert err.value.code == "LEDGER_FORBIDDEN"
    with seeded.connect("kernel") as k:
        assert [v["seq"] for v in store.versions(k, MANIFEST_ID)] == [0]
        assert head_row(k, MANIFEST_ID)["curr_hash"] == current["curr_hash"]


# ------------------------------------------------------------------------------ concurrency

def test_concurrent_explicit_versions_never_fork(seeded, operator):
    threads, rounds = 4, 4
    span_id = str(uuid.uuid4())
    barrier = threading.Barrier(threads)
    conns = [seeded.connect("kernel") for _ in range(threads)]
    try:
        def attempt(i: int, prev: dict | None) -> str:
            span = (next_version(operator, prev, who=f"writer{i}") if prev
                    else sealed(operator, id=span_id, who=f"writer{i}"))
            barrier.wait(timeout=30)
            try:
                kernel_insert(conns[i], span)
            except LoglineError as exc:
                return exc.code
            return "ok"

        with ThreadPoolExecutor(threads) as pool, seeded.connect("kernel") as reader:
            prev = None
            for r in range(rounds):
                outcomes = list(pool.map(attempt, range(threads), [prev] * threads))
                assert sorted(outcomes) == ["LEDGER_SEQ_CONFLICT"] * (threads - 1) + ["ok"], r
                prev = store.head(reader, span_id)
                reader.rollback()
                assert prev["seq"] == r
                assert prev["who"] == f"writer{outcomes.index('ok')}"
            assert_linear(reader, span_id, rounds)
    finally:
        for c in conns:
            c.close()


def test_concurrent_auto_chained_appends_all_succeed_linearly(seeded, operator):
    threads = store.MAX_CHAIN_RETRIES  # each loss is another writer's commit: N-1 at most
    span_id = str(uuid.uuid4())
    barrier = threading.Barrier(threads)

    def append(i: int) -> dict:
        with seeded.connect("kernel") as conn:
            barrier.wait(timeout=30)
            return store.append(conn, [draft(id=span_id, who=f"writer{i}")], operator)[0]

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(append, range(threads)))
    assert sorted(r["seq"] for r in results) == list(range(threads))
    with seeded.connect("kernel") as conn:
        rows = assert_linear(conn, span_id, threads)
        assert sorted(r["who"] for r in rows) == sorted(f"writer{i}" for i in range(threads))
        by_seq = {r["seq"]: r for r in results}
        assert [by_seq[r["seq"]]["curr_hash"] for r in rows] == [r["curr_hash"] for r in rows]


# ------------------------------------------------------------------- global append position

def _waiting_for_append_lock(conn: psycopg.Connection, pid: int) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %s AND locktype = 'advisory' "
        "AND NOT granted AND ((classid::bigint << 32) | objid::bigint) = %s) AS w",
        (pid, APPEND_LOCK_KEY)).fetchone()["w"]


def _position(conn: psycopg.Connection, span_id: str) -> int:
    return conn.execute(f"SELECT position FROM {TABLE} WHERE id = %s AND seq = 0",
                        (span_id,)).fetchone()["position"]


def test_position_is_assigned_in_commit_order(seeded, operator):
    done = threading.Event()
    result: dict[str, Any] = {}
    with seeded.connect("kernel") as t1, seeded.connect("kernel") as t2, \
            seeded.connect("kernel", autocommit=True) as watcher:
        seen_before = watcher.execute(f"SELECT max(position) AS p FROM {TABLE}").fetchone()["p"]

        def second() -> None:
            try:
                result["span"] = store.append(t2, [draft(this="second")], operator)[0]
            except BaseException as exc:  # reported by the main thread
                result["error"] = exc
            finally:
                done.set()

        worker = threading.Thread(target=second)
        with t1.transaction():
            [first] = store.append(t1, [draft(this="first")], operator)
            p1 = _position(t1, first["id"])
            worker.start()
            wait_until(lambda: _waiting_for_append_lock(watcher, t2.info.backend_pid),
                       "the second appender to wait for the append lock")
            assert not done.is_set()
            # T1 is not committed: nobody sees its position yet.
            assert watcher.execute(f"SELECT max(position) AS p FROM {TABLE}"
                                   ).fetchone()["p"] == seen_before
        assert done.wait(timeout=30), "the second append never finished after T1 committed"
        worker.join(timeout=30)
        assert "error" not in result, result.get("error")
        p2 = _position(watcher, result["span"]["id"])
        assert seen_before < p1 < p2


def test_reader_never_sees_a_position_below_one_already_seen(seeded, operator):
    writers, appends = 4, 25
    barrier = threading.Barrier(writers + 1)

    def write(i: int) -> int:
        with seeded.connect("kernel") as conn:
            barrier.wait(timeout=30)
            for n in range(appends):
                store.append(conn, [draft(this=f"w{i} #{n}", tenant_id=f"T{i}")], operator)
        return appends

    with seeded.connect("kernel", autocommit=True) as reader, ThreadPoolExecutor(writers) as pool:
        futures = [pool.submit(write, i) for i in range(writers)]
        seen = {r["position"] for r in reader.execute(f"SELECT position FROM {TABLE}")}
        initial, high, polls = len(seen), max(seen), 0
        barrier.wait(timeout=30)
        deadline = time.monotonic() + 60
        while True:
            last = all(f.done() for f in futures)
            assert time.monotonic() < deadline, "writers did not finish"
            rows = reader.execute(f"SELECT position FROM {TABLE}").fetchall()
            new = {r["position"] for r in rows} - seen
            below = sorted(p for p in new if p < high)
            assert not below, f"positions {below} appeared after {high} had been seen"
            seen |= new
            high = max(seen)
            polls += 1
            if last:
                break
        for f in futures:
            f.result()
    assert len(seen) == initial + writers * appends
    assert polls > 1


# -------------------------------------------------------------------------- head projection

def test_head_projection_tracks_the_latest_version(kernel, operator):
    before = kernel.execute("SELECT count(*) AS n FROM ledger.span_heads").fetchone()["n"]
    job, other = str(uuid.uuid4()), str(uuid.uuid4())
    statuses = ["scheduled", "running", "failed", "scheduled", "done"]
    for i, status in enumerate(statuses):
        store.append(kernel, [draft(id=job, entity_type="request", status=status,
                                     visibility="tenant" if i < 3 else "public"),
                               draft(id=str(uuid.uuid4()), entity_type="request",
                                     status="scheduled")], operator)
    store.append(kernel, [draft(id=other, entity_type="request", status="scheduled")],
                  operator)
    rows = kernel.execute(f"SELECT * FROM {TABLE} WHERE id = %s ORDER BY seq", (job,)).fetchall()
    latest = rows[-1]
    head = head_row(kernel, job)
    assert head["seq"] == len(statuses) - 1
    for column in ("curr_hash", "position", "entity_type", "status", "owner_id", "tenant_id",
                   "visibility", "is_deleted", "at"):
        assert head[column] == latest[column], column
    # Every head is the last stored version of its id and agrees with it column by column.
    bad = kernel.execute(
        "SELECT h.id FROM ledger.span_heads h LEFT JOIN ledger.universal_registry r "
        "ON r.id = h.id AND r.seq = h.seq WHERE r.id IS NULL "
        "OR (h.curr_hash, h.position, h.entity_type, h.status, h.owner_id, h.tenant_id, "
        "    h.visibility, h.is_deleted, h.at) IS DISTINCT FROM "
        "   (r.curr_hash, r.position, r.entity_type, r.status, r.owner_id, r.tenant_id, "
        "    r.visibility, r.is_deleted, r.at) "
        "OR EXISTS (SELECT 1 FROM ledger.universal_registry x WHERE x.id = h.id "
        "           AND x.seq > h.seq)").fetchall()
    assert bad == []
    counts = kernel.execute(
        "SELECT (SELECT count(*) FROM ledger.latest_spans) AS latest, "
        "(SELECT count(DISTINCT id) FROM ledger.universal_registry) AS ids, "
        "(SELECT count(*) FROM ledger.span_heads) AS heads").fetchone()
    assert counts["latest"] == counts["ids"] == counts["heads"] == before + len(statuses) + 2
    [row] = kernel.execute("SELECT seq, status FROM ledger.latest_spans WHERE id = %s",
                           (job,)).fetchall()
    assert row == {"seq": len(statuses) - 1, "status": "done"}
    scheduled = {r["id"] for r in kernel.execute(
        "SELECT id::text AS id FROM ledger.span_heads WHERE entity_type = 'request' "
        "AND status = 'scheduled'")}
    assert job not in scheduled and other in scheduled and len(scheduled) == len(statuses) + 1


# ----------------------------------------------------------------------------------- NOTIFY

def test_notify_carries_a_small_envelope_even_for_a_big_span(seeded, operator):
    code = "".join(f"line {i}: print({i})\n" for i in range(12000))[: 200 * 1024]
    assert len(code) == 200 * 1024
    with seeded.connect("kernel", autocommit=True) as listener, \
            seeded.connect("kernel") as writer:
        listener.execute("LISTEN timeline_updates")
        [span] = store.append(writer, [draft(entity_type="function", code=code,
                                              visibility="tenant")], operator)
        notes = list(listener.notifies(timeout=10, stop_after=1))
        position = _position(writer, span["id"])
        assert store.head(writer, span["id"])["code"] == code
    assert len(notes) == 1
    note = notes[0]
    assert note.channel == "timeline_updates"
    assert len(note.payload.encode()) < 400
    payload = json.loads(note.payload)
    assert payload == {"position": position, "id": span["id"], "seq": 0, "tenant_id": "A",
                       "visibility": "tenant", "entity_type": "function"}


def test_notify_is_sent_only_on_commit(seeded, operator):
    with seeded.connect("kernel", autocommit=True) as listener, \
            seeded.connect("kernel") as writer:
        listener.execute("LISTEN timeline_updates")
        with pytest.raises(RuntimeError), writer.transaction():
            store.append(writer, [draft(this="rolled back")], operator)
            raise RuntimeError("abort")
        [kept] = store.append(writer, [draft(this="kept")], operator)
        notes = list(listener.notifies(timeout=10, stop_after=1))
        # Notifications arrive in commit order: the first one is already the kept span's.
        assert [json.loads(n.payload)["id"] for n in notes] == [kept["id"]]


# ----------------------------------------------------------------------------- idempotency

def test_request_idempotency_key_is_unique_per_tenant(kernel, operator):
    def request(**fields: Any) -> dict:
        return draft(**{"entity_type": "request", "status": "scheduled",
                        "metadata": {"idempotency_key": "fn-1:2024-06-01"}, **fields})

    [first] = store.append(kernel, [request()], operator)
    with pytest.raises(LoglineError) as err:
        store.append(kernel, [request()], operator)
    assert err.value.code == "LEDGER_DUPLICATE"
    assert "ur_request_idempotency" in err.value.message
    # Completing the request appends seq 1 with the same key: allowed.
    [done] = store.append(kernel, [request(id=first["id"], status="done")], operator)
    assert done["seq"] == 1
    # Other tenants and other kinds of span may use the same key.
    store.append(kernel, [request(tenant_id="B")], operator)
    store.append(kernel, [draft(entity_type="note", metadata={
        "idempotency_key": "fn-1:2024-06-01"})], operator)
    n = kernel.execute(f"SELECT count(*) AS n FROM {TABLE} WHERE entity_type = 'request' AND "
                       "tenant_id = 'A'").fetchone()["n"]
    assert n == 2  # first seq 0 and seq 1; the duplicate left nothing behind


# ------------------------------------------------------------------------------ migrations

def _applied(database: db.Database) -> list[tuple[int, str]]:
    with database.connect("admin") as conn:
        return [(r["version"], r["name"]) for r in conn.execute(
            "SELECT version, name FROM logline_meta.migrations ORDER BY version")]


def test_migrate_twice_is_a_no_op(empty_database, one_migration_at_a_time):
    names = [m.name for m in migrate.discover()]
    assert migrate.migrate(empty_database) == names
    recorded = _applied(empty_database)
    assert [n for _, n in recorded] == names
    assert migrate.migrate(empty_database) == []
    assert migrate.migrate(empty_database) == []
    assert _applied(empty_database) == recorded


def _copy_applied_schema(database: db.Database, target: Path) -> list[Path]:
    """schema/ as this database applied it (files other work adds meanwhile left out)."""
    target.mkdir()
    copied = []
    for _, name in _applied(database):
        copied.append(Path(shutil.copy2(schema_dir() / f"{name}.sql", target)))
    return copied


def test_migrate_applies_only_a_new_migration(database, tmp_path):
    schema = tmp_path / "schema"
    _copy_applied_schema(database, schema)
    (schema / "0900_extra.sql").write_text("CREATE TABLE logline_meta.extra (x int);\n")
    assert migrate.migrate(database, schema) == ["0900_extra"]
    assert migrate.migrate(database, schema) == []
    assert _applied(database)[-1] == (900, "0900_extra")


def test_migrate_refuses_a_changed_applied_migration(database, tmp_path):
    schema = tmp_path / "schema"
    changed = _copy_applied_schema(database, schema)[-1]
    changed.write_text(changed.read_text() + "\n-- an innocent-looking edit\n")
    (schema / "0900_after.sql").write_text("CREATE TABLE logline_meta.after (x int);\n")
    before = _applied(database)
    with pytest.raises(LoglineError) as err:
        migrate.migrate(database, schema)
    assert err.value.code == "MIGRATION_CHANGED"
    assert err.value.where == str(changed)
    assert _applied(database) == before  # nothing after the changed file ran either
    with database.connect("admin") as conn:
        assert conn.execute("SELECT to_regclass('logline_meta.after') AS t").fetchone()["t"] \
            is None


def test_migrated_catalog_is_the_designed_schema(database):
    with database.connect("admin") as conn:
        def rows(sql: str, *params: Any) -> list[dict]:
            return conn.execute(sql, params).fetchall()

        rels = {r["relname"]: r for r in rows(
            "SELECT c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity, "
            "c.reloptions, pg_get_userbyid(c.relowner) AS owner FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'ledger'")}
        for table in ("universal_registry", "span_heads"):
            assert rels[table]["relkind"] == "r"
            assert rels[table]["relrowsecurity"] and rels[table]["relforcerowsecurity"], table
            assert rels[table]["owner"] == "logline_owner"
        for view in ("visible_timeline", "latest_spans"):
            assert rels[view]["relkind"] == "v"
            assert "security_invoker=true" in (rels[view]["reloptions"] or []), view
        assert rels["position_seq"]["relkind"] == "S"

        columns = {r["attname"] for r in rows(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped", TABLE)}
        assert columns == set(FIELDS) | {"position", "chain_hash"}
        timeline = {r["attname"] for r in rows(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'ledger.visible_timeline'"
            "::regclass AND attnum > 0")}
        assert timeline == columns | {"when"}

        triggers = {r["tgname"]: r for r in rows(
            "SELECT tgname, tgenabled, tgtype FROM pg_trigger WHERE tgrelid = %s::regclass "
            "AND NOT tgisinternal", TABLE)}
        assert set(triggers) == {"ur_append", "ur_no_update_delete", "ur_no_truncate",
                                 "ur_after_append"}
        assert {t["tgenabled"] for t in triggers.values()} == {"O"}

        policies = {(r["tablename"], r["policyname"]): (r["cmd"], r["roles"]) for r in rows(
            "SELECT tablename, policyname, cmd, roles::text[] AS roles FROM pg_policies "
            "WHERE schemaname = 'ledger'")}
        assert policies == {
            ("universal_registry", "span_read"): ("SELECT", ["logline_app"]),
            ("universal_registry", "span_append"): ("INSERT", ["logline_app"]),
            ("universal_registry", "owner_read"): ("SELECT", ["logline_owner"]),
            ("span_heads", "head_maintain"): ("ALL", ["logline_owner"]),
            ("span_heads", "head_read"): ("SELECT", ["logline_app"]),
        }

        indexes = {r["indexname"]: r["indexdef"] for r in rows(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'ledger' "
            "AND tablename = 'universal_registry'")}
        assert {"ur_position", "ur_at", "ur_entity_at", "ur_owner_tenant", "ur_trace",
                "ur_parent", "ur_related", "ur_metadata", "ur_request_idempotency"} \
            <= set(indexes)
        assert "UNIQUE" in indexes["ur_position"]
        assert "UNIQUE" in indexes["ur_request_idempotency"]
        assert "USING gin" in indexes["ur_related"] and "USING gin" in indexes["ur_metadata"]

        grants = {(r["grantee"], r["table_name"], r["privilege_type"]) for r in rows(
            "SELECT grantee, table_name, privilege_type FROM information_schema.role_table_grants"
            " WHERE table_schema = 'ledger' AND grantee IN ('logline_app', 'logline_kernel') "
            "AND table_name IN ('universal_registry', 'span_heads', 'visible_timeline', "
            "'latest_spans')")}
        expected = {(role, t, "SELECT") for role in ("logline_app", "logline_kernel")
                    for t in ("universal_registry", "span_heads", "visible_timeline",
                              "latest_spans")}
        expected |= {(role, "universal_registry", "INSERT")
                     for role in ("logline_app", "logline_kernel")}
        assert grants == expected


def test_verify_accepts_the_spans_written_here(seeded, operator, seed_rows, tenants):
    """The spans the tests above write through the kernel are a valid ledger."""
    with seeded.connect("kernel") as conn:
        report = verify.verify(conn, public_key_hex(operator), jobs=1)
    assert report.ok, report.failures
    assert report.ids == len(tenants) - 1 + len({r["id"] for r in seed_rows})




def test_a_migration_racing_another_database_on_role_settings_is_retried(
        server, database, empty_database, one_migration_at_a_time):
    """Roles and their settings belong to the whole server (0001, 0006), and the migration
    lock is per database: migrating two databases of one server at once can meet on a role
    setting. The loser's update fails with 'tuple concurrently updated'; it is retried, not
    reported. Reproduced exactly (`database` makes sure the roles exist): another session
    updates the setting 0006 writes and commits only once the migration waits on it."""
    with server.connect("admin", autocommit=False) as other, \
            server.connect("admin") as watch:
        other.execute("ALTER ROLE logline_app SET statement_timeout = '30s'")
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(migrate.migrate, empty_database)
            deadline = time.monotonic() + 60
            while not _waits_on_a_lock(watch, empty_database):
                assert not running.done(), running.result()
                assert time.monotonic() < deadline, "the migration never reached 0006"
                time.sleep(0.01)
            other.commit()
            assert running.result(timeout=60) == [m.name for m in migrate.discover()]


def _waits_on_a_lock(conn: Any, database: db.Database) -> bool:
    dbname = psycopg.conninfo.conninfo_to_dict(database.url("admin"))["dbname"]
    return conn.execute("SELECT 1 FROM pg_stat_activity WHERE datname = %s "
                        "AND wait_event_type = 'Lock'", (dbname,)).fetchone() is not None
