"""Issue 2's acceptance check: behind the application's back, a superuser edit of any column,
the removal of a version that later versions chain to, or a row inserted without a trusted
signature each make `verify` fail and name the span.

The tampering is done the way a database administrator would: a superuser connection with
`SET session_replication_role = replica`, which switches the ledger's triggers off. Each case
is checked twice: through stage0.ledger.verify.verify and through the real `logline verify`
CLI (exit code 1, the span and the reason in the human output and in `--json`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from helpers.ledger import tamper
from nacl.signing import SigningKey
from psycopg.types.json import Jsonb

from stage0.ledger import db, manifest, store, verify
from stage0.spans.canonical import FIELDS, JSON_FIELDS, normalise, now_at
from stage0.spans.proofs import digest, public_key_hex, seal

TABLE = "ledger.universal_registry"
COLUMNS = (*FIELDS, "position", "chain_hash")


@dataclass(frozen=True)
class Ledger:
    """The ledger under test: span X has three versions with every column filled; `gap` is a
    position handed out to an append that rolled back, just before X seq 1 was appended."""

    database: db.Database
    root: str
    key: SigningKey
    x: str
    gap: int
    versions: list[dict[str, Any]]


def full_span(span_id: str, status: str) -> dict[str, Any]:
    """A draft with every span column set (chaining and proofs are filled by store.append)."""
    return {
        "id": span_id, "entity_type": "function", "who": "tester", "did": "defined",
        "this": "a span with every column", "parent_id": str(uuid.uuid4()),
        "related_to": [str(uuid.uuid4()), str(uuid.uuid4())], "owner_id": "alice",
        "tenant_id": "A", "visibility": "tenant", "status": status, "is_deleted": False,
        "name": "adder", "description": "adds two numbers", "code": "def main(a, b): return a+b",
        "language": "python", "runtime": "python3.11", "input": {"a": 1, "b": 2},
        "output": {"sum": 3}, "error": {"message": "none"}, "duration_ms": 12,
        "trace_id": "trace-1", "metadata": {"limit": 100, "tags": ["x"]},
        "content": {"text": "hello"},
    }


def note(**fields: Any) -> dict[str, Any]:
    return {"entity_type": "note", "who": "tester", "this": "neighbour", "owner_id": "bob",
            "tenant_id": "A", **fields}


@pytest.fixture
def ledger_x(seeded: db.Database, operator: SigningKey) -> Ledger:
    x = str(uuid.uuid4())
    with seeded.connect("kernel") as conn:
        store.append(conn, [note(), note(visibility="public")], operator)
        store.append(conn, [full_span(x, "draft")], operator)
        with pytest.raises(RuntimeError), conn.transaction():
            [lost] = store.append(conn, [note(this="rolled back")], operator)
            gap = position_of(conn, lost["id"], 0)
            raise RuntimeError("roll back: leave a hole in the positions")
        store.append(conn, [full_span(x, "active")], operator)
        store.append(conn, [note(this="between")], operator)
        store.append(conn, [full_span(x, "retired")], operator)
        store.append(conn, [note(this="after")], operator)
        versions = conn.execute(f"SELECT * FROM {TABLE} WHERE id = %s ORDER BY seq",
                                (x,)).fetchall()
    assert [v["seq"] for v in versions] == [0, 1, 2]
    assert all(v[c] is not None for v in versions[1:] for c in COLUMNS)
    assert versions[0]["position"] < gap < versions[1]["position"]
    return Ledger(seeded, public_key_hex(operator), operator, x, gap, versions)


def position_of(conn: psycopg.Connection, span_id: str, seq: int) -> int:
    return conn.execute(f"SELECT position FROM {TABLE} WHERE id = %s AND seq = %s",
                        (span_id, seq)).fetchone()["position"]


def run_verify(database: db.Database, root: str, jobs: int = 1) -> verify.Report:
    with database.connect("kernel") as conn:
        return verify.verify(conn, root, jobs=jobs)


def failures(report: verify.Report) -> set[tuple[str, int, str]]:
    return {(f.id, f.seq, f.reason) for f in report.failures}


def assert_named(led: Ledger, cli, span_id: str, seq: int, reason: str) -> verify.Report:
    """verify() and `logline verify` (human and --json) both fail and name (span, seq, reason)."""
    report = run_verify(led.database, led.root)
    assert not report.ok
    assert (span_id, seq, reason) in failures(report), report.failures
    human = cli("verify", check=False)
    assert human.returncode == 1, human.stdout + human.stderr
    assert f"FAIL {span_id} seq {seq} {reason}" in human.stdout, human.stdout
    assert "ok: every hash" not in human.stdout
    machine = cli("verify", "--json", check=False)
    assert machine.returncode == 1, machine.stdout + machine.stderr
    data = json.loads(machine.stdout)
    assert data["ok"] is False
    assert {"id": span_id, "seq": seq, "reason": reason} in [
        {k: f[k] for k in ("id", "seq", "reason")} for f in data["failures"]], data
    return report


def _stranger_signature(led: Ledger) -> str:
    """A well-formed signature by another key over X seq 1's own digest."""
    return SigningKey.generate().sign(bytes.fromhex(led.versions[1]["curr_hash"])).signature.hex()


#: column -> (SET expression for X seq 1, which row verify must name, with which reason).
#: In "named", None means X itself; a string is the name of a parameter holding the new id.
TEXT = "{col} || ' (edited)'"
JSONB = "{col} || '{{\"edited\": true}}'::jsonb"
TAMPERS: dict[str, tuple[str, int, str]] = {
    "id": ("%(new_id)s::uuid", 1, "HASH_MISMATCH"),
    "seq": ("7", 7, "HASH_MISMATCH"),
    "entity_type": (TEXT, 1, "HASH_MISMATCH"),
    "who": (TEXT, 1, "HASH_MISMATCH"),
    "did": (TEXT, 1, "HASH_MISMATCH"),
    "this": ('"this" || \' (edited)\'', 1, "HASH_MISMATCH"),
    "at": ("at + interval '1 second'", 1, "HASH_MISMATCH"),
    "parent_id": ("%(new_id)s::uuid", 1, "HASH_MISMATCH"),
    "related_to": ("related_to || %(new_id)s::uuid", 1, "HASH_MISMATCH"),
    "owner_id": (TEXT, 1, "HASH_MISMATCH"),
    "tenant_id": (TEXT, 1, "HASH_MISMATCH"),
    "visibility": ("'public'", 1, "HASH_MISMATCH"),
    "status": (TEXT, 1, "HASH_MISMATCH"),
    "is_deleted": ("NOT is_deleted", 1, "HASH_MISMATCH"),
    "name": (TEXT, 1, "HASH_MISMATCH"),
    "description": (TEXT, 1, "HASH_MISMATCH"),
    "code": (TEXT, 1, "HASH_MISMATCH"),
    "language": (TEXT, 1, "HASH_MISMATCH"),
    "runtime": (TEXT, 1, "HASH_MISMATCH"),
    "input": (JSONB, 1, "HASH_MISMATCH"),
    "output": (JSONB, 1, "HASH_MISMATCH"),
    "error": (JSONB, 1, "HASH_MISMATCH"),
    "duration_ms": ("duration_ms + 1", 1, "HASH_MISMATCH"),
    "trace_id": (TEXT, 1, "HASH_MISMATCH"),
    "prev_hash": ("repeat('ab', 32)", 1, "HASH_MISMATCH"),
    "curr_hash": ("repeat('cd', 32)", 1, "HASH_MISMATCH"),
    "signature": ("%(signature)s", 1, "SIGNATURE_INVALID"),
    "public_key": ("%(public_key)s", 1, "HASH_MISMATCH"),
    "metadata": (JSONB, 1, "HASH_MISMATCH"),
    "content": (JSONB, 1, "HASH_MISMATCH"),
    # Not part of a span: covered by the ledger-wide chain. The new value is a real hole in
    # the positions (an append that rolled back), between X's seq 0 and seq 2, below the
    # high-water mark: only the chain can tell.
    "position": ("%(gap)s", 1, "LEDGER_CHAIN_BROKEN"),
    "chain_hash": ("repeat('ef', 32)", 1, "LEDGER_CHAIN_BROKEN"),
}


def test_every_column_has_a_tamper_case(database):
    with database.connect("admin") as conn:
        columns = {r["attname"] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped", (TABLE,))}
    assert columns == set(TAMPERS) == set(COLUMNS)


@pytest.mark.parametrize("column", TAMPERS)
def test_superuser_edit_of_any_column_is_named(ledger_x, cli, column):
    expression, seq, reason = TAMPERS[column]
    quoted = '"this"' if column == "this" else column
    new_id = str(uuid.uuid4())
    params = {"x": ledger_x.x, "new_id": new_id, "gap": ledger_x.gap,
              "signature": _stranger_signature(ledger_x),
              "public_key": public_key_hex(SigningKey.generate())}
    tamper(ledger_x.database, f"UPDATE {TABLE} SET {quoted} = {expression.format(col=quoted)} "
           "WHERE id = %(x)s AND seq = 1", params)
    with ledger_x.database.connect("admin") as conn:
        row = conn.execute(f"SELECT * FROM {TABLE} WHERE position = %s",
                           (ledger_x.versions[1]["position"] if column != "position"
                            else ledger_x.gap,)).fetchone()
    assert row[column] != ledger_x.versions[1][column]  # the edit really happened
    named = new_id if column == "id" else ledger_x.x
    assert_named(ledger_x, cli, named, seq, reason)


# ----------------------------------------------------------------------- removed versions

def test_removing_a_middle_version_is_named(ledger_x, cli):
    tamper(ledger_x.database, f"DELETE FROM {TABLE} WHERE id = %(x)s AND seq = 1",
           {"x": ledger_x.x})
    report = assert_named(ledger_x, cli, ledger_x.x, 2, "CHAIN_BROKEN")
    assert any(f.reason == "LEDGER_CHAIN_BROKEN" for f in report.failures)


def test_removing_seq_0_is_named(ledger_x, cli):
    tamper(ledger_x.database, f"DELETE FROM {TABLE} WHERE id = %(x)s AND seq = 0",
           {"x": ledger_x.x})
    assert_named(ledger_x, cli, ledger_x.x, 1, "CHAIN_BROKEN")


def test_removing_the_latest_version_is_named(ledger_x, cli):
    tamper(ledger_x.database, f"DELETE FROM {TABLE} WHERE id = %(x)s AND seq = 2",
           {"x": ledger_x.x})
    assert_named(ledger_x, cli, ledger_x.x, 2, "HEAD_MISMATCH")


def test_removing_the_latest_version_and_rewriting_its_head_is_caught(ledger_x, cli):
    """A careful administrator also points the head at seq 1: the ledger-wide chain still
    breaks at the row appended after the removed one."""
    v1, v2 = ledger_x.versions[1], ledger_x.versions[2]
    tamper(ledger_x.database, f"DELETE FROM {TABLE} WHERE id = %(x)s AND seq = 2",
           {"x": ledger_x.x})
    tamper(ledger_x.database, "UPDATE ledger.span_heads SET seq = 1, curr_hash = %(h)s, "
           "position = %(p)s, status = %(s)s, at = %(at)s WHERE id = %(x)s",
           {"x": ledger_x.x, "h": v1["curr_hash"], "p": v1["position"], "s": v1["status"],
            "at": v1["at"]})
    with ledger_x.database.connect("admin") as conn:
        after = conn.execute(f"SELECT id::text AS id, seq FROM {TABLE} WHERE position > %s "
                             "ORDER BY position LIMIT 1", (v2["position"],)).fetchone()
    assert_named(ledger_x, cli, after["id"], after["seq"], "LEDGER_CHAIN_BROKEN")


# ------------------------------------------------------------ rows without a trusted signature

def _admin_insert(database: db.Database, span: dict[str, Any], triggers: bool) -> None:
    """A superuser INSERT of a span; with triggers off it must invent position and chain."""
    values = {f: Jsonb(span[f]) if f in JSON_FIELDS and span[f] is not None else span[f]
              for f in FIELDS}
    columns = [f'"{f}"' for f in FIELDS]
    placeholders = [f"%({f})s" for f in FIELDS]
    with database.connect("admin") as conn:
        if not triggers:
            conn.execute("SET session_replication_role = replica")
            top = conn.execute(f"SELECT max(position) AS p FROM {TABLE}").fetchone()["p"]
            values.update(position=top + 1, chain_hash="0" * 64)
            columns += ["position", "chain_hash"]
            placeholders += ["%(position)s", "%(chain_hash)s"]
        conn.execute(f"INSERT INTO {TABLE} ({', '.join(columns)}) "
                     f"VALUES ({', '.join(placeholders)})", values)
        conn.commit()


def _new_span(key: SigningKey, **fields: Any) -> dict[str, Any]:
    return seal(normalise(note(id=str(uuid.uuid4()), at=now_at(), **fields)), key)


@pytest.mark.parametrize("triggers", [True, False], ids=["through-triggers", "triggers-off"])
def test_row_signed_by_an_untrusted_key_is_named(ledger_x, cli, triggers):
    span = _new_span(SigningKey.generate(), this="planted")
    _admin_insert(ledger_x.database, span, triggers)
    assert_named(ledger_x, cli, span["id"], 0, "KEY_UNTRUSTED")


@pytest.mark.parametrize("signature", ["stale", "zeros", "other-key"])
def test_row_with_recomputed_hash_but_no_valid_signature_is_named(ledger_x, cli, signature):
    span = _new_span(ledger_x.key, this="honest")
    old_signature = span["signature"]
    span["this"] = "forged"
    span["curr_hash"] = digest(span).hex()  # the hash checks out again ...
    span["signature"] = {  # ... but nobody trusted signed it
        "stale": old_signature, "zeros": "0" * 128,
        "other-key": SigningKey.generate().sign(bytes.fromhex(span["curr_hash"])).signature.hex(),
    }[signature]
    _admin_insert(ledger_x.database, span, triggers=True)
    assert_named(ledger_x, cli, span["id"], 0, "SIGNATURE_INVALID")


def test_edit_with_recomputed_hash_is_named(ledger_x, cli):
    v1 = store.span_from_row(ledger_x.versions[1])
    v1["code"] = "def main(a, b): return a - b"
    v1["curr_hash"] = digest(v1).hex()
    tamper(ledger_x.database, f"UPDATE {TABLE} SET code = %(code)s, curr_hash = %(h)s "
           "WHERE id = %(x)s AND seq = 1", {"code": v1["code"], "h": v1["curr_hash"],
                                             "x": ledger_x.x})
    report = assert_named(ledger_x, cli, ledger_x.x, 1, "SIGNATURE_INVALID")
    assert (ledger_x.x, 2, "CHAIN_BROKEN") in failures(report)


def _manifest_version(conn: psycopg.Connection, key: SigningKey, **metadata: Any) -> dict:
    """The next manifest version, signed by `key`, built without the Python trust checks."""
    current = store.head(conn, manifest.MANIFEST_ID)
    draft = {k: v for k, v in current.items()
             if k not in ("curr_hash", "signature", "public_key", "at")}
    draft.update(seq=current["seq"] + 1, prev_hash=current["curr_hash"], at=now_at(),
                 metadata={**current["metadata"], **metadata})
    return seal(normalise(draft), key)


def test_latest_manifest_signed_by_a_trusted_non_root_key_is_named(ledger_x, cli):
    author = SigningKey.generate()
    with ledger_x.database.connect("kernel") as conn:
        manifest.set_trust(conn, ledger_x.key, public_key_hex(author), "author", True)
        conn.commit()
        forged = _manifest_version(conn, author, allowed_boot_ids=["forged"])
        # The database checks the chain, not the signer: this goes in.
        with conn.transaction():
            store.insert(conn, [forged])
    report = run_verify(ledger_x.database, ledger_x.root)
    assert (manifest.MANIFEST_ID, "MANIFEST_UNTRUSTED") in {(f.id, f.reason)
                                                            for f in report.failures}
    human = cli("verify", check=False)
    assert human.returncode == 1
    assert f"FAIL {manifest.MANIFEST_ID} seq" in human.stdout
    assert "MANIFEST_UNTRUSTED" in human.stdout
    data = json.loads(cli("verify", "--json", check=False).stdout)
    assert (manifest.MANIFEST_ID, "MANIFEST_UNTRUSTED") in {(f["id"], f["reason"])
                                                            for f in data["failures"]}


def test_middle_manifest_version_signed_by_a_non_root_key_is_named(ledger_x, cli):
    author = SigningKey.generate()
    with ledger_x.database.connect("kernel") as conn:
        manifest.set_trust(conn, ledger_x.key, public_key_hex(author), "author", True)
        conn.commit()
        forged = _manifest_version(conn, author, allowed_boot_ids=["forged"])
        with conn.transaction():
            store.insert(conn, [forged])
        # The operator appends a proper version on top; the forged one stays in the history.
        with conn.transaction():
            store.insert(conn, [_manifest_version(conn, ledger_x.key)])
    assert_named(ledger_x, cli, manifest.MANIFEST_ID, forged["seq"], "MANIFEST_UNTRUSTED")


# --------------------------------------------------------------------------- the honest case

@pytest.fixture
def busy_ledger(seeded: db.Database, operator: SigningKey) -> db.Database:
    """A few hundred honest spans: 120 ids, most with several versions, two tenants."""
    drafts = []
    for i in range(120):
        span_id = str(uuid.uuid4())
        for v in range(1 + i % 4):
            drafts.append(note(id=span_id, this=f"span {i} v{v}", tenant_id="AB"[i % 2],
                               metadata={"i": i, "v": v, "text": "é✓" * (i % 5)}))
    with seeded.connect("kernel") as conn:
        for start in range(0, len(drafts), 50):
            store.append(conn, drafts[start:start + 50], operator)
    return seeded


@pytest.mark.parametrize("jobs", [1, 2])
def test_untampered_ledger_verifies(busy_ledger, operator, monkeypatch, jobs):
    monkeypatch.setattr(verify, "CHUNK", 64)  # several chunks, so jobs=2 really shares work
    report = run_verify(busy_ledger, public_key_hex(operator), jobs=jobs)
    assert report.ok, report.failures
    with busy_ledger.connect("kernel") as conn:
        counts = conn.execute(f"SELECT count(*) AS n, count(DISTINCT id) AS ids FROM {TABLE}"
                              ).fetchone()
    assert counts["n"] >= 300
    assert (report.spans, report.ids, report.jobs) == (counts["n"], counts["ids"], jobs)


def test_untampered_ledger_verifies_through_the_cli(busy_ledger, cli):
    human = cli("verify", "--jobs", "2")
    assert "ok: every hash, signature, key and chain checks out" in human.stdout
    data = json.loads(cli("verify", "--json", "--jobs", "1").stdout)
    assert data["ok"] is True and data["failures"] == [] and data["spans"] >= 300


def test_parallel_verify_names_the_same_failures(busy_ledger, operator, monkeypatch):
    monkeypatch.setattr(verify, "CHUNK", 64)
    with busy_ledger.connect("admin") as conn:
        victims = conn.execute(f"SELECT id::text AS id, seq FROM {TABLE} WHERE seq = 1 "
                               "ORDER BY position DESC LIMIT 3").fetchall()
    for v in victims:
        tamper(busy_ledger, f"UPDATE {TABLE} SET \"this\" = 'edited' WHERE id = %(id)s "
               "AND seq = %(seq)s", v)
    root = public_key_hex(operator)
    one, two = run_verify(busy_ledger, root, jobs=1), run_verify(busy_ledger, root, jobs=2)
    assert failures(one) == failures(two)
    assert {(v["id"], v["seq"], "HASH_MISMATCH") for v in victims} <= failures(two)


# ------------------------------------------------------- edits verify does not see (findings)

LOSSY = {
    "at-sub-millisecond": (
        "at = at + interval '400 microseconds'",
        "`at` is signed at millisecond precision and span_from_row truncates what it reads, "
        "so moving a stored `at` by less than a millisecond re-hashes to the same curr_hash. "
        "Fix: CHECK (at = date_trunc('milliseconds', at)) in schema/, or verify compares the "
        "stored value with the parsed one"),
    "jsonb-number-beyond-float64": (
        "metadata = jsonb_set(metadata, '{limit}', '100.0000000000000001')",
        "jsonb keeps numeric digits a float64 cannot hold; Python reads 100.0000000000000001 "
        "as 100.0, which JCS renders as 100, so the edit re-hashes to the same curr_hash while "
        "SQL (metadata->>'limit')::numeric > 100 now holds. Fix: verify parses JSON numbers "
        "with Decimal and fails any whose float64 round trip differs"),
    "array-lower-bound": (
        "related_to = array_fill(related_to[1], ARRAY[1], ARRAY[5]) "
        "|| related_to[2:2]",
        "uuid[] can carry a lower bound other than 1 ('[5:6]={...}'); psycopg returns the "
        "same list, so the hash is unchanged while related_to[1] in SQL is now NULL. Fix: "
        "CHECK (related_to IS NULL OR array_lower(related_to, 1) = 1)"),
}


@pytest.mark.parametrize("case", list(LOSSY))
def test_edit_hidden_by_a_lossy_read_is_named(ledger_x, cli, case):
    def stored_text() -> dict[str, Any]:
        with ledger_x.database.connect("admin") as conn:
            return conn.execute(f"SELECT at::text, metadata::text, related_to::text FROM {TABLE}"
                                " WHERE id = %s AND seq = 1", (ledger_x.x,)).fetchone()

    before = stored_text()
    try:
        tamper(ledger_x.database, f"UPDATE {TABLE} SET {LOSSY[case][0]} "
               "WHERE id = %(x)s AND seq = 1", {"x": ledger_x.x})
    except psycopg.errors.CheckViolation:
        return  # the database refuses the edit outright: equally good
    assert stored_text() != before  # what SQL reads really changed
    assert_named(ledger_x, cli, ledger_x.x, 1, "HASH_MISMATCH")


HEAD_EDITS = {
    "status": "'scheduled'",
    "visibility": "'public'",
    "entity_type": "'request'",
    "owner_id": "'mallory'",
    "tenant_id": "'B'",
    "is_deleted": "true",
    "at": "at - interval '1 day'",
}


@pytest.mark.parametrize("column", list(HEAD_EDITS))
def test_superuser_edit_of_the_head_projection_is_named(ledger_x, cli, column):
    tamper(ledger_x.database, f"UPDATE ledger.span_heads SET {column} = {HEAD_EDITS[column]} "
           "WHERE id = %(x)s", {"x": ledger_x.x})
    assert_named(ledger_x, cli, ledger_x.x, 2, "HEAD_MISMATCH")


@pytest.mark.parametrize("column,value", [("seq", "1"), ("curr_hash", "repeat('0', 64)"),
                                          ("position", "position + 1000")])
def test_superuser_edit_of_head_chain_columns_is_named(ledger_x, cli, column, value):
    tamper(ledger_x.database, f"UPDATE ledger.span_heads SET {column} = {value} "
           "WHERE id = %(x)s", {"x": ledger_x.x})
    report = run_verify(ledger_x.database, ledger_x.root)
    assert ledger_x.x in {f.id for f in report.failures if f.reason == "HEAD_MISMATCH"}
    human = cli("verify", check=False)
    assert human.returncode == 1 and f"FAIL {ledger_x.x} seq" in human.stdout
