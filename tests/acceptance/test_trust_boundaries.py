"""Attacks on who may sign what, and on the ledger's history (docs/security.md).

A tenant's writes arrive through POST /api/spans and are signed with the edge key, which the
manifest trusts for every kind but the platform's: a client can never mint an execution, a
request completion, a job or an approval, however it spells the kind, and `verify` names any
platform record that a non-platform key signed. A superuser who removes the newest rows or
restores an older backup is caught by the recorded tip and by a checkpoint kept outside the
database.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers.api import Api, Key, start_api
from nacl.signing import SigningKey

from stage0 import keys
from stage0.boot.loader import BootRefused, Loader
from stage0.errors import LoglineError
from stage0.ledger import checkpoint, db, manifest, store, verify
from stage0.spans.canonical import normalise, now_at, parse_at
from stage0.spans.proofs import public_key_hex, seal

RUN_CODE = "00000000-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory) -> Any:
    yield from start_api(server, template, tmp_path_factory.mktemp("trust"))


@pytest.fixture(scope="module")
def writer(api: Api) -> Key:
    return api.key("wendy", "acme", "writer", "reader", "requester")


def error_code(response: Any) -> str:
    return response.json()["error"]["code"]


# --- platform kinds through the API -----------------------------------------------------------
@pytest.mark.parametrize("kind", [
    "execution", "request", "policy_cursor", "policy_error", "rollup", "metric", "job",
    "approval", "approval_request", "boot_event", "api_key", "manifest", "audit_summary",
    # look-alikes: zero-width, upper case, Cyrillic 'е', a trailing bidi override, spaces
    "execution\u200b", "Execution", "\u0435xecution", "approval\u202e", " job ", "jo b",
])
def test_a_writer_cannot_post_a_platform_kind_or_a_look_alike(api, writer, kind):
    response = api.client(writer).post("/api/spans", json={
        "entity_type": kind, "who": "wendy", "this": "forged", "visibility": "tenant",
        "status": "complete"})
    assert response.status_code == 422, response.text
    assert error_code(response) == "BAD_FIELD"


def test_a_writer_cannot_mark_their_own_request_complete(api, writer):
    client = api.client(writer)
    fn = client.post("/api/spans", json={
        "entity_type": "function", "who": "wendy", "this": "echo", "visibility": "tenant",
        "code": "def main(input):\n    return input\n", "language": "python"}).json()
    scheduled = client.post("/api/execute", json={"span_id": fn["id"], "input": {"n": 1}})
    assert scheduled.status_code == 202, scheduled.text
    request_id = scheduled.json()["request_id"]
    forged = client.post("/api/spans", json={
        "id": request_id, "entity_type": "request", "who": "wendy", "this": "echo",
        "status": "complete", "visibility": "tenant", "output": {"n": 1}})
    assert forged.status_code == 422, forged.text
    head = client.get(f"/api/spans/{request_id}").json()
    assert (head["seq"], head["status"]) == (0, "scheduled")


def test_what_a_client_posts_is_signed_by_the_edge_key(api, writer):
    span = api.client(writer).post("/api/spans", json={
        "entity_type": "note", "who": "wendy", "this": "hello"}).json()
    root = keys.operator_key(api.home)
    assert span["public_key"] == public_key_hex(keys.edge_key(root))
    with api.kernel() as conn:
        signers = manifest.signers(conn, public_key_hex(root))
    assert span["public_key"] in signers.trusted
    assert span["public_key"] not in signers.platform


def test_a_client_signed_platform_kind_from_an_author_key_is_refused(api, writer):
    author = SigningKey.generate()
    api.cli("keys", "trust", public_key_hex(author), "--name", "wendy laptop")

    def signed(kind: str) -> dict[str, Any]:
        return seal(normalise({
            "id": str(uuid.uuid4()), "at": now_at(), "entity_type": kind, "who": "wendy",
            "this": "client signed", "owner_id": "wendy", "tenant_id": "acme",
            "visibility": "tenant"}), author)

    client = api.client(writer)
    assert client.post("/api/spans", json=signed("note")).status_code == 201
    response = client.post("/api/spans", json=signed("execution"))
    assert (response.status_code, error_code(response)) == (422, "BAD_FIELD")


def test_the_server_sets_at_and_keeps_the_clients_apart(api, writer):
    backdated = "2001-09-09T01:46:40.000Z"
    span = api.client(writer).post("/api/spans", json={
        "entity_type": "note", "who": "wendy", "this": "backdated", "at": backdated,
        "metadata": {"k": 1}}).json()
    assert abs(parse_at(span["at"]) - datetime.now(UTC)) < timedelta(minutes=5)
    assert span["metadata"] == {"k": 1, "client_at": backdated}


def test_concurrent_next_versions_without_a_seq_all_land(api, writer):
    client = api.client(writer)
    first = client.post("/api/spans", json={"entity_type": "note", "who": "wendy",
                                            "this": "v0"}).json()
    statuses: list[int] = []
    barrier = threading.Barrier(6)

    def next_version(n: int) -> None:
        barrier.wait()
        response = api.client(writer).post("/api/spans", json={
            "id": first["id"], "entity_type": "note", "who": "wendy", "this": f"v{n}"})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=next_version, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [201] * 6
    versions = client.get(f"/api/spans/{first['id']}", params={"all": "1"}).json()["items"]
    assert [v["seq"] for v in versions] == list(range(7))


# --- verify and the loader enforce the key roles ----------------------------------------------
def test_verify_names_a_platform_record_signed_by_the_edge_key(seeded, operator):
    edge = keys.edge_key(operator)
    with seeded.connect("kernel") as conn:
        [forged] = store.append(conn, [{
            "entity_type": "execution", "who": "run_code", "this": "forged",
            "owner_id": "wendy", "tenant_id": "acme", "status": "complete"}], edge)
        [fine] = store.append(conn, [{"entity_type": "note", "who": "wendy", "this": "ok",
                                       "owner_id": "wendy", "tenant_id": "acme"}], edge)
        report = verify.verify(conn, public_key_hex(operator), jobs=1)
    found = {(f.id, f.reason) for f in report.failures}
    assert found == {(forged["id"], "KIND_NOT_PLATFORM_SIGNED")}
    assert fine["id"] not in {f.id for f in report.failures}


def test_a_kernel_signed_by_an_author_key_does_not_boot(seeded, operator, home):
    author = SigningKey.generate()
    with seeded.connect("kernel") as conn:
        manifest.set_trust(conn, operator, public_key_hex(author), "author", True)
        head = store.head(conn, RUN_CODE)
        draft = {k: v for k, v in head.items()
                 if k not in ("curr_hash", "signature", "public_key", "at")}
        draft.update(seq=head["seq"] + 1, prev_hash=head["curr_hash"])
        store.append(conn, [draft], author)
    with Loader(seeded, home) as loader, pytest.raises(BootRefused) as refused:
        loader.boot(RUN_CODE, {"function_id": str(uuid.uuid4())})
    assert refused.value.code == "KEY_NOT_PLATFORM"


def test_a_worker_key_trusted_as_platform_may_sign_platform_records(seeded, operator):
    machine = SigningKey.generate()
    with seeded.connect("kernel") as conn:
        manifest.set_trust(conn, operator, public_key_hex(machine), "machine-2", True,
                           role="platform")
        store.append(conn, [{"entity_type": "execution", "who": "run_code", "this": "x",
                              "owner_id": "u", "tenant_id": "t"}], machine)
        assert verify.verify(conn, public_key_hex(operator), jobs=1).ok


def test_a_trusted_key_role_outside_the_known_ones_is_refused(seeded, operator):
    with seeded.connect("kernel") as conn, pytest.raises(LoglineError) as refused:
        manifest.set_trust(conn, operator, "ab" * 32, "x", True, role="god")
    assert refused.value.code == "KEY_ROLE_INVALID"


# --- truncation and rollback ------------------------------------------------------------------
def superuser(database: db.Database, sql: str, params: tuple = ()) -> None:
    """One statement as a superuser with the ledger's triggers switched off."""
    with database.connect("admin") as conn:
        conn.execute("SET session_replication_role = replica")
        assert conn.execute(sql, params).rowcount >= 1, sql
        conn.commit()


def notes(database: db.Database, operator: SigningKey, n: int) -> list[dict[str, Any]]:
    with database.connect("kernel") as conn:
        return [store.append(conn, [{"entity_type": "note", "who": "w", "this": f"n{i}",
                                      "owner_id": "u", "tenant_id": "t"}], operator)[0]
                for i in range(n)]


def reasons(database: db.Database, operator: SigningKey,
            point: dict[str, Any] | None = None) -> set[str]:
    with database.connect("kernel") as conn:
        report = verify.verify(conn, public_key_hex(operator), jobs=1, checkpoint=point)
    return {f.reason for f in report.failures}


def test_rows_deleted_from_the_end_are_named(seeded, operator):
    last = notes(seeded, operator, 3)[-1]
    assert reasons(seeded, operator) == set()
    # The superuser covers the tracks in the head projection too: only the tip is left.
    superuser(seeded, "DELETE FROM ledger.universal_registry WHERE id = %s", (last["id"],))
    superuser(seeded, "DELETE FROM ledger.span_heads WHERE id = %s", (last["id"],))
    assert reasons(seeded, operator) == {"CHAIN_TRUNCATED"}


def test_a_checkpoint_catches_truncation_with_the_tip_rewritten(seeded, operator, cli,
                                                                tmp_path):
    notes(seeded, operator, 2)
    cli("checkpoint", "--out", str(tmp_path / "tip.json"))
    later = notes(seeded, operator, 2)
    assert "still holds" in cli("verify", "--checkpoint", str(tmp_path / "tip.json")).stdout
    # The superuser removes everything from the checkpoint on and makes the tip agree: the
    # ledger left is consistent, and only the checkpoint can tell.
    point = json.loads((tmp_path / "tip.json").read_text())
    superuser(seeded, "DELETE FROM ledger.span_heads WHERE position >= %s",
              (point["position"],))
    superuser(seeded, "DELETE FROM ledger.universal_registry WHERE position >= %s",
              (point["position"],))
    superuser(seeded, "UPDATE ledger.chain_tip SET position = r.position, chain_hash = "
              "r.chain_hash FROM (SELECT position, chain_hash FROM ledger.universal_registry "
              "ORDER BY position DESC LIMIT 1) r")
    assert later and reasons(seeded, operator) == set()
    result = cli("verify", "--checkpoint", str(tmp_path / "tip.json"), check=False)
    assert result.returncode == 1
    assert "CHAIN_TRUNCATED" in result.stdout


def test_a_checkpoint_catches_history_rewritten_before_it(seeded, operator):
    notes(seeded, operator, 2)
    with seeded.connect("kernel") as conn:
        point = checkpoint.take(conn, operator)
    superuser(seeded, "UPDATE ledger.universal_registry SET chain_hash = %s WHERE position = %s",
              ("0" * 64, point["position"]))
    assert "CHAIN_FORKED" in reasons(seeded, operator, point)


@pytest.mark.parametrize("edit", ["position", "chain_hash", "signature", "kind"])
def test_an_edited_checkpoint_file_is_refused(seeded, operator, tmp_path, edit):
    notes(seeded, operator, 1)
    with seeded.connect("kernel") as conn:
        point = checkpoint.take(conn, operator)
    point[edit] = {"position": 1, "chain_hash": "f" * 64, "signature": "00" * 64,
                   "kind": "other"}[edit]
    path = Path(tmp_path / "tip.json")
    path.write_text(json.dumps(point))
    with pytest.raises(LoglineError) as refused:
        checkpoint.load(path, public_key_hex(operator))
    assert refused.value.code == "CHECKPOINT_INVALID"
