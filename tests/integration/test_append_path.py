"""Regressions of the append path (schema/0004) and of verify found while making them faster:
each of these once left an honest ledger failing `verify`, or crashed it.

- An append from a REPEATABLE READ transaction whose snapshot predates another append's
  commit chained itself to a stale ledger tip (a fork). Now it is refused (serialization
  failure, retried by the caller) and the ledger stays whole.
- INSERT ... ON CONFLICT DO NOTHING of a row the idempotency index skips still wrote that
  row's head (a head with no row: HEAD_MISMATCH for everyone, caused by any API writer).
- verify crashed on an `at` PostgreSQL can store but Python cannot read (infinity).
"""

from __future__ import annotations

import json

import psycopg
import pytest

from stage0.errors import LoglineError
from stage0.ledger import store, verify


def note(**fields):
    return {"entity_type": "note", "who": "t", "this": "x", "owner_id": "t",
            "tenant_id": "acme", "visibility": "tenant", **fields}


def assert_verifies(conn, home) -> None:
    report = verify.verify(conn, home.root_public_key(), jobs=1)
    assert report.ok, [(f.id, f.seq, f.reason, f.detail) for f in report.failures[:5]]


def test_an_append_from_a_stale_repeatable_read_snapshot_is_refused_not_forked(
        seeded, operator, home):
    with seeded.connect("kernel") as other, seeded.connect("kernel", autocommit=False) as rr:
        rr.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        rr.execute("SELECT count(*) FROM ledger.universal_registry").fetchone()  # the snapshot
        store.append(other, [note()], operator)  # commits after rr's snapshot
        with pytest.raises(LoglineError) as refused:
            store.append(rr, [note()], operator)
        assert refused.value.code == "LEDGER_STALE_SNAPSHOT"
        assert "retry the transaction" in refused.value.message
        rr.rollback()
        # Retried in a fresh transaction, it chains to the real tip.
        store.append(rr, [note()], operator)
        rr.commit()
        assert_verifies(other, home)


def test_a_row_skipped_by_on_conflict_leaves_no_head_and_no_notification(seeded, operator,
                                                                         home):
    """As the API's role: two requests with one idempotency key; the second is skipped."""
    spans = [store.prepare(note(entity_type="request", status="scheduled",
                                 metadata={"idempotency_key": "k1"}), {}, operator, None)
             for _ in range(2)]
    columns = ", ".join(f'"{f}"' for f in store.FIELDS)
    with seeded.connect("app") as app, seeded.connect("kernel") as kernel:
        kernel.execute("LISTEN timeline_updates")
        for span in spans:
            with app.transaction():
                app.execute("SELECT set_config('app.user_id', 't', true), "
                            "set_config('app.tenant_id', 'acme', true)")
                values = [psycopg.types.json.Jsonb(span[f]) if f in store.JSON_FIELDS
                          and span[f] is not None else span[f] for f in store.FIELDS]
                app.execute(f"INSERT INTO ledger.universal_registry ({columns}) VALUES "
                            f"({', '.join(['%s'] * len(values))}) ON CONFLICT DO NOTHING",
                            values)
        heads = kernel.execute("SELECT id::text AS id FROM ledger.span_heads WHERE id = "
                               "ANY(%s::uuid[])", ([s["id"] for s in spans],)).fetchall()
        assert [h["id"] for h in heads] == [spans[0]["id"]]
        notified = [n.payload for n in kernel.notifies(timeout=0.5, stop_after=5)]
        assert len(notified) == 1 and spans[0]["id"] in notified[0]
        assert_verifies(kernel, home)


def test_verify_names_an_at_python_cannot_read_instead_of_crashing(seeded, operator):
    with seeded.connect("kernel") as conn:
        [span] = store.append(conn, [note()], operator)
    with seeded.connect("admin") as admin:
        admin.execute("SET session_replication_role = replica")
        admin.execute("UPDATE ledger.universal_registry SET at = 'infinity' WHERE id = %s",
                      (span["id"],))
    with seeded.connect("kernel") as conn:
        report = verify.verify(conn, operator.verify_key.encode().hex(), jobs=1)
    assert (span["id"], "HASH_MISMATCH") in {(f.id, f.reason) for f in report.failures}



# --- one statement for new ids (store._append_small) -------------------------------------------

def test_a_small_batch_mixing_new_and_existing_ids_is_chained_and_stored_whole(
        seeded, operator, home):
    """The batch goes first as if every id were new; the statement finds A's head and
    inserts nothing, and the batch is then chained to it: A gets seq 1, B seq 0, nothing
    twice (a half-inserted first attempt would make the second fail on B)."""
    a = "6a2b5c1e-0000-4000-8000-00000000000a"
    b = "6a2b5c1e-0000-4000-8000-00000000000b"
    with seeded.connect("kernel") as conn:
        first = store.append(conn, [note(id=a)], operator)[0]
        stored = store.append(conn, [note(id=a, status="second"), note(id=b)], operator)
        assert [(s["id"], s["seq"]) for s in stored] == [(a, 1), (b, 0)]
        assert stored[0]["prev_hash"] == first["curr_hash"]
        assert [v["seq"] for v in store.versions(conn, a)] == [0, 1]
        assert [v["seq"] for v in store.versions(conn, b)] == [0]
        assert store.head(conn, a)["status"] == "second"
        assert_verifies(conn, home)


def test_several_versions_of_a_new_id_in_one_small_batch_chain_to_each_other(
        seeded, operator, home):
    c = "6a2b5c1e-0000-4000-8000-0000000000c0"
    with seeded.connect("kernel") as conn:
        stored = store.append(conn, [note(id=c, status=s) for s in ("a", "b", "c")], operator)
        assert [s["seq"] for s in stored] == [0, 1, 2]
        assert [s["prev_hash"] for s in stored[1:]] == [s["curr_hash"] for s in stored[:2]]
        assert store.head(conn, c)["status"] == "c"
        assert_verifies(conn, home)


def test_the_app_role_appends_new_and_next_versions_in_one_call_under_rls(seeded, operator):
    """Under row-level security the statement sees only the heads the caller may read,
    like the heads query it replaces: the caller's own span is found and chained."""
    a = "6a2b5c1e-0000-4000-8000-0000000000a1"
    with seeded.connect("app") as app:
        for status in ("one", "two", "three"):
            with app.transaction():
                app.execute("SELECT set_config('app.user_id', 't', true), "
                            "set_config('app.tenant_id', 'acme', true)")
                store.append(app, [note(id=a, status=status)], operator)
        with app.transaction():
            app.execute("SELECT set_config('app.user_id', 't', true), "
                        "set_config('app.tenant_id', 'acme', true)")
            assert [(v["seq"], v["status"]) for v in store.versions(app, a)] == [
                (0, "one"), (1, "two"), (2, "three")]


def test_a_refused_span_in_a_small_batch_stores_nothing(seeded, operator):
    a = "6a2b5c1e-0000-4000-8000-0000000000c1"
    with seeded.connect("kernel") as conn:
        store.append(conn, [note(id=a)], operator)
        with pytest.raises(LoglineError) as refused:  # another tenant: ownership is fixed
            store.append(conn, [note(this="lost"), note(id=a, tenant_id="other")], operator)
        assert refused.value.code == "LEDGER_OWNERSHIP_CHANGE"
        assert [v["seq"] for v in store.versions(conn, a)] == [0]
        assert conn.execute("SELECT count(*) AS n FROM ledger.universal_registry "
                            "WHERE this = 'lost'").fetchone()["n"] == 0


# --- the statement trigger's one-row path (schema/0013) ---------------------------------------

def _trigger_effects(conn, ids, tenant):
    heads = conn.execute(
        "SELECT id::text AS id, seq, curr_hash, position, entity_type, status, owner_id, "
        "tenant_id, visibility, is_deleted, at FROM ledger.span_heads "
        "WHERE id = ANY(%s::uuid[]) ORDER BY position", (ids,)).fetchall()
    tip = conn.execute("SELECT position, chain_hash FROM ledger.chain_tip").fetchone()
    newest = conn.execute("SELECT position, chain_hash FROM ledger.universal_registry "
                          "ORDER BY position DESC LIMIT 1").fetchone()
    execs = conn.execute("SELECT day, n FROM ledger.tenant_exec_counts WHERE tenant_id = %s",
                         (tenant,)).fetchall()
    tokens = conn.execute("SELECT provider, day, tokens FROM ledger.provider_token_counts "
                          "WHERE tenant_id = %s ORDER BY provider", (tenant,)).fetchall()
    return heads, tip == newest, execs, tokens


@pytest.mark.parametrize("one_by_one", [True, False], ids=["one span a statement", "batched"])
def test_single_span_statements_leave_what_a_batch_leaves(seeded, operator, home, one_by_one):
    """Heads, notifications (in position order), the chain tip and the execution and token
    counters are the same whether spans come one per statement (0013's one-row path) or in
    one statement (the set-based path)."""
    tenant = f"t13-{'single' if one_by_one else 'batch'}"
    x = "6a2b5c1e-0000-4000-8000-0000000013" + ("01" if one_by_one else "02")
    spans = [
        note(id=x, tenant_id=tenant, status="first"),
        note(entity_type="execution", tenant_id=tenant, status="complete"),
        note(entity_type="provider_execution", tenant_id=tenant, this="prov-a",
             metadata={"tokens_in": 7, "tokens_out": 5}),
        note(id=x, tenant_id=tenant, status="second"),
        note(entity_type="provider_execution", tenant_id=tenant, this="prov-a",
             metadata={"tokens_in": 1, "tokens_out": "junk"}),
        note(entity_type="execution", tenant_id=tenant, status="complete"),
    ]
    with seeded.connect("kernel") as conn:
        conn.execute("LISTEN timeline_updates")
        if one_by_one:
            stored = [store.append(conn, [s], operator)[0] for s in spans]
        else:
            with conn.transaction():  # one multi-row statement (versions of x chained)
                stored = store.append(conn, spans, operator)
        heads, tip_ok, execs, tokens = _trigger_effects(
            conn, sorted({s["id"] for s in stored}), tenant)
        assert tip_ok
        assert [(h["id"], h["seq"], h["status"]) for h in heads if h["id"] == x] == [
            (x, 1, "second")]
        assert {h["id"] for h in heads} == {s["id"] for s in stored}
        last = {s["id"]: s for s in stored}
        for h in heads:
            assert (h["seq"], h["curr_hash"]) == (last[h["id"]]["seq"],
                                                 last[h["id"]]["curr_hash"])
        assert [e["n"] for e in execs] == [2]
        assert [(t["provider"], t["tokens"]) for t in tokens] == [("prov-a", 13)]
        notified = [n.payload for n in conn.notifies(timeout=0.5, stop_after=len(spans))]
        assert [json.loads(p)["seq"] for p in notified] == [s["seq"] for s in stored]
        assert [json.loads(p)["id"] for p in notified] == [s["id"] for s in stored]
        positions = [json.loads(p)["position"] for p in notified]
        assert positions == sorted(positions)
        assert set(json.loads(notified[0])) == {"position", "id", "seq", "tenant_id",
                                                "visibility", "entity_type"}
        assert_verifies(conn, home)


def test_an_insert_that_stores_nothing_touches_no_head_tip_or_counter(seeded, operator):
    """store.append's "insert if these ids are new" stores nothing when one is not: the
    statement trigger then writes nothing (0013 returns at once)."""
    a = "6a2b5c1e-0000-4000-8000-000000001303"
    with seeded.connect("kernel") as conn:
        store.append(conn, [note(id=a, entity_type="execution", tenant_id="t13-none")],
                     operator)
        before = _trigger_effects(conn, [a], "t13-none")
        conn.execute("LISTEN timeline_updates")
        [draft] = store._prepare_rows([note(id=a, entity_type="execution",
                                            tenant_id="t13-none")], {}, operator, None)[1]
        found = store._insert_if_new(conn, [a], [draft])
        assert a in found
        assert _trigger_effects(conn, [a], "t13-none") == before
        assert list(conn.notifies(timeout=0.3, stop_after=1)) == []


# --- heads this connection wrote (store._KNOWN): a guess, checked by the statement ----------

def test_a_stale_remembered_head_is_not_trusted(seeded, operator, home):
    """Connection A remembers x at seq 0; B appends seq 1; A's next append of x is chained to
    B's version (seq 2), not to what A remembered, and the ledger verifies."""
    x = "6a2b5c1e-0000-4000-8000-000000001304"
    y = "6a2b5c1e-0000-4000-8000-000000001305"
    with seeded.connect("kernel") as a, seeded.connect("kernel") as b:
        store.append(a, [note(id=x), note(id=y)], operator)
        assert store._known_heads(a)[x][0] == 0
        from_b = store.append(b, [note(id=x, status="from b")], operator)[0]
        assert from_b["seq"] == 1
        stored = store.append(a, [note(id=x, status="from a")], operator)[0]
        assert (stored["seq"], stored["prev_hash"]) == (2, from_b["curr_hash"])
        # Several ids: y as remembered (right), x remembered again (right), a new id.
        store.append(b, [note(id=y, status="from b")], operator)
        both = store.append(a, [note(id=x, status="again"), note(id=y, status="again"),
                                note()], operator)
        assert [s["seq"] for s in both] == [3, 2, 0]
        assert [v["seq"] for v in store.versions(a, x)] == [0, 1, 2, 3]
        assert [v["seq"] for v in store.versions(a, y)] == [0, 1, 2]
        assert_verifies(a, home)


def test_heads_of_a_rolled_back_transaction_are_not_remembered(seeded, operator, home):
    x = "6a2b5c1e-0000-4000-8000-000000001306"
    with seeded.connect("kernel") as conn:
        first = store.append(conn, [note(id=x)], operator)[0]
        with pytest.raises(RuntimeError), conn.transaction():
            store.append(conn, [note(id=x, status="rolled back")], operator)
            raise RuntimeError("roll back")
        assert store._known_heads(conn)[x] == (0, first["curr_hash"])
        stored = store.append(conn, [note(id=x, status="kept")], operator)[0]
        assert (stored["seq"], stored["prev_hash"]) == (1, first["curr_hash"])
        assert_verifies(conn, home)
