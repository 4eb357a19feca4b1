"""The API the console uses to show why things happened: the timeline's filters (status,
owner, time), the tenant's queue and quota (GET /api/queue) and the ledger-wide verification
(POST /api/verify). A real `logline serve` over a seeded ledger of this module's own, real
keys, real kernels (booted through the stage-0 loader, as a worker would).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from helpers.api import ECHO, Api, assert_error, post, start_api
from helpers.ledger import tamper
from nacl.signing import SigningKey

from stage0 import keys
from stage0.api import operations
from stage0.api.errors import ApiError
from stage0.api.state import ServerState
from stage0.boot.loader import Loader
from stage0.ledger import manifest, store
from stage0.runtime.worker import KERNELS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory) -> Iterator[Api]:
    yield from start_api(server, template, tmp_path_factory.mktemp("console-api"))


def manifest_key(api: Api) -> SigningKey:
    return keys.operator_key(api.home)


def tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def run_requests(api: Api) -> None:
    """What a worker does: claim every scheduled request and run it."""
    with Loader(api.database, api.home) as loader:
        while loader.boot(KERNELS["request_worker"], {"batch": 32})["claimed"]:
            pass


# --- timeline filters ---------------------------------------------------------------------
def test_the_timeline_narrows_by_status_owner_and_time(api):
    name = tenant()
    alice, bob = api.client(api.key("alice", name)), api.client(api.key("bob", name))
    trace = str(uuid.uuid4())  # keeps this test's spans apart from the rest of the ledger
    shared = {"trace_id": trace, "visibility": "tenant"}
    spans = [post(alice, status="open", **shared), post(alice, status="done", **shared),
             post(bob, who="bob", status="open", **shared)]
    with api.kernel() as conn:
        [old] = store.append(conn, [{
            "entity_type": "note", "who": "alice", "this": "from 2020", "owner_id": "alice",
            "tenant_id": name, "visibility": "tenant", "status": "open", "trace_id": trace,
            "at": "2020-01-01T00:00:00.000Z"}], manifest_key(api))

    def ids(**params: str) -> list[str]:
        answer = alice.get("/api/timeline", params={"trace_id": trace, **params})
        assert answer.status_code == 200, answer.text
        return [s["id"] for s in answer.json()["items"]]

    everything = [s["id"] for s in (old, *spans)]
    assert sorted(ids()) == sorted(everything)
    assert sorted(ids(status="open")) == sorted([old["id"], spans[0]["id"], spans[2]["id"]])
    assert ids(owner_id="bob") == [spans[2]["id"]]
    assert ids(status="open", owner_id="alice", until="2021-01-01T00:00:00Z") == [old["id"]]
    assert sorted(ids(**{"from": "2021-01-01T00:00:00Z"})) == sorted(s["id"] for s in spans)
    assert ids(**{"from": "2019-12-31T23:00:00-01:00",  # 2020-01-01 00:00 UTC, inclusive
                  "until": "2020-01-01T00:00:00.001Z"}) == [old["id"]]
    assert ids(status="nope") == []

    for params in ({"from": "yesterday"}, {"until": "2020-01-01T00:00:00"},  # no zone
                   {"from": "2021-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"}):
        assert_error(alice.get("/api/timeline", params=params), 400, "BAD_QUERY")


# --- the queue ----------------------------------------------------------------------------
def test_the_queue_counts_waiting_and_running_requests_and_the_quota_as_the_ledger_does(api):
    name = tenant()
    alice = api.client(api.key("alice", name))
    other = api.client(api.key("alice", tenant()))
    function = post(alice, entity_type="function", name="echo", code=ECHO, language="python",
                    visibility="tenant", status="active")
    theirs = post(other, entity_type="function", name="echo", code=ECHO, language="python",
                  visibility="tenant", status="active")

    empty = alice.get("/api/queue").json()
    assert (empty["tenant_id"], empty["queued"], empty["running"], empty["executions_today"],
            empty["last_execution"], empty["oldest_queued_at"]) == (name, 0, 0, 0, None, None)
    assert empty["daily_limit"] == 100 and empty["remaining"] == 100

    for n in range(3):
        assert alice.post("/api/execute", json={"span_id": function["id"],
                                                "input": {"n": n}}).status_code == 202
    assert other.post("/api/execute", json={"span_id": theirs["id"]}).status_code == 202
    waiting = alice.get("/api/queue").json()
    assert (waiting["queued"], waiting["running"]) == (3, 0)
    first = alice.get("/api/timeline", params={"entity_type": "request",
                                                "limit": 3}).json()["items"][-1]
    assert waiting["oldest_queued_at"] == first["at"]

    # A worker's claim is a row lock held by its open transaction: those requests run.
    with api.kernel() as claimer:
        claimer.autocommit = False
        claimed = claimer.execute("SELECT tenant_id FROM ledger.claim_requests_v1(2)"
                                  ).fetchall()
        mine = sum(1 for r in claimed if r["tenant_id"] == name)
        assert mine == 2  # the oldest two are ours
        running = alice.get("/api/queue").json()
        assert (running["queued"], running["running"]) == (1, 2)
        claimer.rollback()  # a worker that dies: its requests wait again
    assert alice.get("/api/queue").json()["running"] == 0

    run_requests(api)
    done = alice.get("/api/queue").json()
    with api.kernel() as conn:
        ledger_count = conn.execute(
            "SELECT count(*) AS n FROM ledger.universal_registry WHERE entity_type = "
            "'execution' AND tenant_id = %s AND (at AT TIME ZONE 'UTC')::date = "
            "(now() AT TIME ZONE 'UTC')::date", (name,)).fetchone()["n"]
        newest = conn.execute(
            "SELECT id::text AS id, status, duration_ms FROM ledger.universal_registry "
            "WHERE entity_type = 'execution' AND tenant_id = %s ORDER BY position DESC "
            "LIMIT 1", (name,)).fetchone()
    assert (done["queued"], done["running"], done["executions_today"]) == (0, 0, 3)
    assert ledger_count == 3 and done["remaining"] == 97
    last = done["last_execution"]
    assert (last["id"], last["status"], last["duration_ms"]) == (
        newest["id"], "complete", newest["duration_ms"])

    # The limit is the manifest's; a reader may look.
    with api.kernel() as conn:
        manifest.amend(conn, manifest_key(api), throttle={"per_tenant_daily_exec_limit": 2})
    try:
        reader = api.client(api.key("rita", name, "reader"))
        quota = reader.get("/api/queue").json()
        assert (quota["daily_limit"], quota["remaining"], quota["executions_today"]) == (2, 0, 3)
    finally:
        with api.kernel() as conn:
            manifest.amend(conn, manifest_key(api),
                           throttle={"per_tenant_daily_exec_limit": 100})


# --- the whole ledger ---------------------------------------------------------------------
def test_verify_is_for_admins_and_checks_every_span(api):
    name = tenant()
    assert_error(api.client(api.key("alice", name)).post("/api/verify"), 403, "G_ROLE_DENIED")
    admin = api.client(api.key("ada", name, "admin"))
    answer = admin.post("/api/verify")
    assert answer.status_code == 200, answer.text
    report = answer.json()
    with api.kernel() as conn:
        counts = conn.execute("SELECT count(*) AS spans, count(DISTINCT id) AS ids FROM "
                              "ledger.universal_registry").fetchone()
        tip = conn.execute("SELECT position, chain_hash FROM ledger.universal_registry "
                           "ORDER BY position DESC LIMIT 1").fetchone()
    assert report["ok"] is True and report["failures"] == [] and report["failure_count"] == 0
    # the allowance this call recorded (record: all) came after the walk's snapshot, or not
    assert counts["spans"] - report["spans"] in (0, 1)
    assert report["tip"]["position"] <= tip["position"]
    # ...and the allowance is on record.
    decisions = admin.get("/api/timeline", params={"entity_type": "gate_decision"}).json()
    assert any(d["this"] == "api.ledger_verify" and d["status"] == "allow"
               for d in decisions["items"])


@pytest.fixture
def damaged(server, template, tmp_path) -> Iterator[Api]:
    """A ledger of this test's own: it is edited behind the ledger's back."""
    yield from start_api(server, template, tmp_path)


def test_verify_names_an_edit_in_your_tenant_and_counts_one_in_another(damaged):
    api = damaged
    name = tenant()
    admin = api.client(api.key("ada", name, "admin"))
    mine = post(api.client(api.key("alice", name)), this="before the edit", visibility="tenant")
    theirs = post(api.client(api.key("bob", tenant())), this="someone else's")
    tamper(api.database, "UPDATE ledger.universal_registry SET this = 'after the edit' "
           "WHERE id = %(id)s", {"id": mine["id"]})
    tamper(api.database, "UPDATE ledger.universal_registry SET this = 'edited too' "
           "WHERE id = %(id)s", {"id": theirs["id"]})
    report = admin.post("/api/verify").json()
    assert report["ok"] is False
    named = {(f["id"], f["seq"], f["reason"]) for f in report["failures"]}
    assert (mine["id"], 0, "HASH_MISMATCH") in named
    assert theirs["id"] not in str(report)
    assert report["not_visible"] >= 1
    assert {"id": None, "seq": None, "reason": "HASH_MISMATCH",
            "detail": "a span you cannot see"} in report["failures"]
    assert report["failure_count"] == len(report["failures"])


def test_one_verification_at_a_time_and_a_bounded_walk(api, monkeypatch):
    """In-process: a second walk while one runs is refused; a walk that cannot finish in
    time is cancelled and answered with its own code (the connection stays usable)."""
    state = ServerState(api.database, api.home)
    state.pools["kernel"].open(wait=True)
    call = SimpleNamespace(state=state)
    try:
        with operations._VERIFYING:
            with pytest.raises(ApiError) as busy:
                operations._verify_once(call)  # type: ignore[arg-type]
        assert (busy.value.status, busy.value.code) == (409, "VERIFY_RUNNING")

        monkeypatch.setattr(operations, "VERIFY_TIMEOUT_S", 0.5)
        with api.database.connect("admin") as blocker:
            blocker.autocommit = False
            blocker.execute("LOCK TABLE ledger.universal_registry IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(ApiError) as slow:
                operations._verify_once(call)  # type: ignore[arg-type]
            blocker.rollback()
        assert (slow.value.status, slow.value.code) == (504, "VERIFY_TIMEOUT")
        assert operations._verify_once(call).ok  # type: ignore[arg-type]
    finally:
        state.pools["kernel"].close()


def test_new_routes_are_in_the_openapi_document(api):
    doc = httpx.get(api.url + "/openapi.json", timeout=10).json()
    timeline = {p["name"] for p in doc["paths"]["/api/timeline"]["get"]["parameters"]}
    assert {"status", "owner_id", "from", "until"} <= timeline
    assert doc["paths"]["/api/queue"]["get"]["x-logline-action"] == "api.queue_read"
    assert doc["paths"]["/api/verify"]["post"]["x-logline-action"] == "api.ledger_verify"
