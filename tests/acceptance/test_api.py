"""The HTTP API as its clients see it: a real `logline serve` subprocess on a free port, over
a seeded ledger of this module's own, spoken to over real HTTP (httpx, and a raw-socket SSE
client that can also stop reading). Keys come from the real `logline apikey create`.

Two tenants, `acme` (A) and `globex` (B), each with a user called `alice`: user names are not
unique across tenants, so any check that matched the owner alone would leak between them.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers import wait_for
from helpers.api import (
    ECHO,
    RUN_CODE,
    Api,
    Key,
    Stream,
    assert_error,
    client_signed,
    post,
    rid,
    start_api,
)
from nacl.signing import SigningKey

from stage0 import keys
from stage0.boot.loader import Loader
from stage0.ledger import store
from stage0.runtime.worker import KERNELS
from stage0.spans.canonical import FIELDS, normalise, now_at
from stage0.spans.proofs import check_proofs, public_key_hex

MIB = 1024 * 1024
#: Every route that needs a key, as (method, path) with a placeholder id.
PROTECTED = [
    ("GET", "/api/spans"), ("POST", "/api/spans"), ("GET", "/api/spans/{id}"),
    ("GET", "/api/timeline"), ("GET", "/api/timeline/stream"), ("POST", "/api/execute"),
    ("GET", "/api/executions"), ("GET", "/api/functions"),
    ("POST", "/api/boot/{id}"), ("GET", "/api/verify/{id}"), ("GET", "/api/metrics"),
    ("GET", "/api/me"), ("GET", "/metrics"),
    # governed execution (tests/acceptance/test_governance.py)
    ("GET", "/api/contracts"), ("POST", "/api/contracts"), ("POST", "/api/contracts/activate"),
    ("POST", "/api/proposals"), ("POST", "/api/intents"), ("GET", "/api/proposals/{id}"),
    ("GET", "/api/approvals"), ("POST", "/api/approvals/{id}"), ("POST", "/api/jobs/claim"),
    ("POST", "/api/jobs/{id}/result"), ("GET", "/api/audit/export"),
    # the console's operations (tests/acceptance/test_console_api.py)
    ("GET", "/api/queue"), ("POST", "/api/verify"),
    # LLM providers (tests/test_llm_api.py)
    ("GET", "/api/admin/providers"), ("GET", "/api/admin/providers/{name}"),
    ("POST", "/api/admin/providers"), ("POST", "/api/admin/providers/{name}/enable"),
    ("POST", "/api/admin/providers/{name}/disable"), ("POST", "/api/admin/providers/{name}/test"),
    # prompts (tests/acceptance/test_prompts_api.py)
    ("GET", "/api/prompts/blocks"), ("GET", "/api/prompts/variants"),
    ("POST", "/api/prompts/build"), ("GET", "/api/prompts/runs"), ("POST", "/api/chat"),
    ("POST", "/api/prompts/evals"), ("POST", "/api/prompts/selections"),
    ("GET", "/api/prompts/selections"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
    # memory (tests/acceptance/test_memory_api.py)
    ("POST", "/api/memory"), ("GET", "/api/memory/search"), ("POST", "/api/memory/forget"),
    ("GET", "/api/memory/export"), ("GET", "/api/memory/{id}"),
    ("POST", "/api/memory/{id}/promote"),
    # opt-in LLM transcripts (tests/acceptance/test_llm_api.py)
    ("GET", "/api/admin/llm-transcripts"), ("POST", "/api/admin/llm-transcripts"),
    ("GET", "/api/admin/llm-transcripts/{execution_id}"),
    # browsing memory (tests/acceptance/test_memory_api.py)
    ("GET", "/api/memory"),
]
PUBLIC = [("GET", "/healthz")]


# --- the server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory) -> Iterator[Api]:
    yield from start_api(server, template, tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def key_a(api: Api) -> Key:
    return api.key("alice", "acme")


@pytest.fixture(scope="module")
def key_b(api: Api) -> Key:
    return api.key("alice", "globex")


@pytest.fixture(scope="module")
def a(api: Api, key_a: Key) -> httpx.Client:
    return api.client(key_a)


@pytest.fixture(scope="module")
def b(api: Api, key_b: Key) -> httpx.Client:
    return api.client(key_b)


def same_refusal(one: httpx.Response, other: httpx.Response) -> None:
    """Two refusals a client cannot tell apart (only the request ids differ)."""
    assert one.status_code == other.status_code
    e1, e2 = one.json()["error"], other.json()["error"]
    assert (e1["code"], e1["message"]) == (e2["code"], e2["message"])


# --- an SSE client on a raw socket ---------------------------------------------------------


def append_as(api: Api, key: Key, n: int, entity_type: str, **fields: Any) -> list[dict]:
    """Append n spans for key's user and tenant straight into the ledger (kernel role)."""
    spans = [{"entity_type": entity_type, "who": key.user, "this": f"{entity_type} {i}",
              "owner_id": key.user, "tenant_id": key.tenant, "visibility": "tenant", **fields}
             for i in range(n)]
    with api.kernel() as conn:
        stored = store.append(conn, spans, keys.operator_key(api.home))
        positions = {r["id"]: r["position"] for r in conn.execute(
            "SELECT id::text AS id, position FROM ledger.universal_registry "
            "WHERE id = ANY(%s::uuid[])", ([s["id"] for s in stored],))}
    return [{**s, "position": positions[s["id"]]} for s in stored]


# --- authentication and roles ---------------------------------------------------------------
@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_anonymous_requests_get_401_with_the_error_shape(api, method, path):
    url = api.url + path.replace("{id}", str(uuid.uuid4()))
    response = httpx.request(method, url, json={} if method == "POST" else None, timeout=10)
    error = assert_error(response, 401, "AUTH_REQUIRED")
    assert "Bearer" in error["message"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_healthz_is_public(api):
    response = httpx.get(api.url + "/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


@pytest.mark.parametrize("authorization", [
    "Bearer not-a-key",
    "Bearer llk_0123456789abcdef_" + "A" * 43,  # well formed, never issued
    "Bearer",
    "Basic YWxpY2U6c2VjcmV0",
    "llk_0123456789abcdef_" + "A" * 43,  # no scheme
], ids=["malformed", "unknown", "empty", "basic", "no-scheme"])
def test_a_bad_key_gets_401(api, authorization):
    response = httpx.get(api.url + "/api/spans", headers={"Authorization": authorization},
                         timeout=10)
    code = response.json()["error"]["code"]
    assert code in ("AUTH_REQUIRED", "AUTH_INVALID")
    assert_error(response, 401, code)
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_key_with_the_wrong_secret_gets_401(api, key_a):
    forged = key_a.token[:-4] + ("AAAA" if not key_a.token.endswith("AAAA") else "BBBB")
    response = api.client(forged).get("/api/spans")
    assert_error(response, 401, "AUTH_INVALID")


def test_a_revoked_key_stops_working_within_seconds(api):
    key = api.key("carol", "acme")
    client = api.client(key)
    assert client.get("/api/spans").status_code == 200
    api.cli("apikey", "revoke", key.key_id)
    revoked = time.monotonic()
    wait_for(lambda: client.get("/api/spans").status_code == 401, 5, "revocation")
    assert time.monotonic() - revoked < 3.5  # the auth cache holds an answer for 2 s
    assert_error(client.get("/api/spans"), 401, "AUTH_INVALID")


def test_me_says_who_the_key_is(api, key_a, a):
    me = a.get("/api/me").json()
    platform = {k: me.pop(k) for k in ("platform_keys", "platform_kinds")}
    assert me == {"key_id": key_a.key_id, "user_id": "alice", "tenant_id": "acme",
                  "roles": ["reader", "writer"]}
    # which keys sign platform records: the root key (no other is trusted as platform here)
    assert platform["platform_keys"] == [api.home.root_public_key()]
    assert {"execution", "approval", "job", "contract"} <= set(platform["platform_kinds"])
    admin = api.key("ada", "globex", "admin")
    assert api.client(admin).get("/api/me").json()["roles"] == ["admin"]


@pytest.mark.parametrize("user, tenant, field", [("ops", "system", "--tenant"),
                                                 ("system", "acme", "--user")])
def test_no_key_is_issued_to_act_as_the_platform_itself(api, user, tenant, field):
    """A key of the system tenant could publish a policy that reads and writes every tenant
    (scope all_tenants), signed by the operator key; a key of user system could append new
    versions of the kernels. The operator seeds such spans; no API key acts as `system`."""
    refused = api.cli("apikey", "create", "--user", user, "--tenant", tenant, check=False)
    assert refused.returncode != 0
    assert f"{field}: APIKEY_RESERVED" in refused.stdout + refused.stderr
    with api.kernel() as conn:
        assert conn.execute("SELECT count(*) AS n FROM ledger.universal_registry WHERE "
                            "entity_type = 'api_key' AND owner_id = %s AND tenant_id = %s",
                            (user, tenant)).fetchone()["n"] == 0


def test_a_platform_key_issued_before_the_rule_does_not_authenticate(api):
    """Fail closed for keys of `system` already in a ledger: as if made by an older version."""
    from stage0.gov import apikeys

    key_id = "5e5e5e5e5e5e5e5e"
    token = f"llk_{key_id}_{'A' * 43}"
    with api.kernel() as conn:
        store.append(conn, [{
            "id": apikeys.span_id_for(keys.derivation_secret(keys.operator_key(api.home)),
                                      key_id), "seq": 0, "entity_type": "api_key",
            "who": "logline", "did": "issued", "this": f"api key {key_id}",
            "owner_id": "ops", "tenant_id": "system", "visibility": "private",
            "status": "active", "metadata": {"key_id": key_id, "roles": ["admin"],
                                             "token_hash": apikeys.token_hash(token)}}],
            keys.operator_key(api.home))
    assert_error(api.client(token).get("/api/me"), 401, "AUTH_INVALID")


def test_a_reader_key_cannot_post(api):
    reader = api.client(api.key("rita", "acme", "reader"))
    assert reader.get("/api/spans").status_code == 200
    response = reader.post("/api/spans", json={"entity_type": "note", "who": "r", "this": "x"})
    assert_error(response, 403, "G_ROLE_DENIED")
    response = reader.post("/api/execute", json={"span_id": RUN_CODE})
    assert_error(response, 403, "G_ROLE_DENIED")


def test_only_the_operator_may_boot_a_kernel(api, a):
    """Kernels act for every tenant: a tenant's admin is refused (acceptance/test_edge.py attacks
    it), the operator's key boots."""
    observer = KERNELS["observer_bot"]
    assert_error(a.post(f"/api/boot/{observer}", json={}), 403, "G_ROLE_DENIED")
    operator = api.client(api.operator())
    response = operator.post(f"/api/boot/{observer}", json={})
    assert response.status_code == 200, response.text
    assert "scheduled" in response.json()["output"]
    assert_error(operator.post(f"/api/boot/{uuid.uuid4()}", json={}), 403, "BOOT_NOT_ALLOWED")


def test_an_operator_action_leaves_its_allowance_on_record_even_when_it_then_fails(api):
    """kernel_boot says `record: all` in the api contract: the gate's ALLOW is a span of
    the request's trace, appended before the handler runs."""
    operator = api.client(api.operator())
    response = operator.post(f"/api/boot/{uuid.uuid4()}", json={},
                             headers={"X-Request-ID": rid("boot-allowed-1")})
    assert_error(response, 403, "BOOT_NOT_ALLOWED")  # the loader refused; the gate did not
    allowed, refused = audit_spans(api, rid("boot-allowed-1"))  # in append order
    assert (allowed["entity_type"], allowed["status"], allowed["owner_id"]) == (
        "gate_decision", "allow", "operator")
    assert allowed["metadata"]["action"] == "api.kernel_boot"
    assert (refused["entity_type"], refused["metadata"]["code"]) == (
        "audit_denial", "BOOT_NOT_ALLOWED")
    # A read records nothing when allowed.
    api.client(api.key("reader9", "acme", "reader")).get(
        "/api/timeline", headers={"X-Request-ID": rid("read-allowed-1")})
    assert audit_spans(api, rid("read-allowed-1")) == []


# --- tenant isolation -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def a_spans(a: httpx.Client) -> dict[str, dict]:
    """A's spans of every visibility (the private one has two versions), all of one entity
    type, status and trace, so every filter B might use would match them."""
    trace = str(uuid.uuid4())
    common = {"entity_type": "iso_note", "status": "iso", "trace_id": trace}
    private = post(a, visibility="private", this="a private", **common)
    private2 = post(a, id=private["id"], visibility="private", this="a private v2", **common)
    out = {"private": private2, "tenant": post(a, visibility="tenant", **common),
           "public": post(a, visibility="public", this="a public", **common),
           "function": post(a, entity_type="function", visibility="tenant", name="secret_fn",
                            code=ECHO, language="python", status="active")}
    out["trace"] = {"trace_id": trace}
    return out


def hidden_ids(a_spans: dict[str, dict]) -> set[str]:
    return {a_spans[k]["id"] for k in ("private", "tenant", "function")}


def test_b_sees_a_public_span_but_none_of_a_private_or_tenant_ones_in_span_lists(
        a_spans, b, a):
    own = post(b, entity_type="iso_note", status="iso", visibility="private")
    queries = [{}, {"entity_type": "iso_note"}, {"status": "iso"}, {"limit": 500},
               {"entity_type": "function"}, {"entity_type": "iso_note", "status": "iso"},
               {"before": a_spans["public"]["position"] + 1000}]
    for params in queries:
        response = b.get("/api/spans", params=params)
        assert response.status_code == 200, response.text
        seen = {s["id"] for s in response.json()["items"]}
        assert not seen & hidden_ids(a_spans), params
        assert all(s["visibility"] == "public" or s["tenant_id"] == "globex"
                   for s in response.json()["items"]), params
    seen = {s["id"] for s in b.get("/api/spans", params={"entity_type": "iso_note"}
                                   ).json()["items"]}
    assert {own["id"], a_spans["public"]["id"]} <= seen
    # and A does see its own
    seen_by_a = {s["id"] for s in a.get("/api/spans", params={"limit": 500}).json()["items"]}
    assert hidden_ids(a_spans) <= seen_by_a


def test_b_gets_the_same_404_for_a_private_span_as_for_a_missing_one(a_spans, b):
    missing = str(uuid.uuid4())
    for kind in ("private", "tenant", "function"):
        span_id = a_spans[kind]["id"]
        for suffix in ("", "?all=1"):
            hidden = b.get(f"/api/spans/{span_id}{suffix}")
            assert_error(hidden, 404, "NOT_FOUND")
            same_refusal(hidden, b.get(f"/api/spans/{missing}{suffix}"))
            assert span_id not in hidden.text
        hidden = b.get(f"/api/verify/{span_id}")
        assert_error(hidden, 404, "NOT_FOUND")
        same_refusal(hidden, b.get(f"/api/verify/{missing}"))


def test_public_spans_are_readable_by_both_tenants(a_spans, a, b):
    public = a_spans["public"]
    for client in (a, b):
        assert client.get(f"/api/spans/{public['id']}").json()["curr_hash"] == \
            public["curr_hash"]
        assert len(client.get(f"/api/spans/{public['id']}?all=1").json()["items"]) == 1
        assert client.get(f"/api/verify/{public['id']}").json()["ok"] is True
    assert len(a.get(f"/api/spans/{a_spans['private']['id']}?all=1").json()["items"]) == 2


def test_b_sees_none_of_a_private_spans_on_the_timeline_with_any_filter(a_spans, b):
    trace = a_spans["trace"]["trace_id"]
    first = min(a_spans[k]["position"] for k in ("private", "tenant", "public", "function"))
    queries = [{}, {"limit": 500}, {"trace_id": trace}, {"entity_type": "iso_note"},
               {"entity_type": "function"}, {"since": first - 1, "limit": 500},
               {"before": a_spans["public"]["position"] + 1}, {"trace_id": trace, "limit": 1},
               {"entity_type": "iso_note", "trace_id": trace, "since": 0}]
    for params in queries:
        response = b.get("/api/timeline", params=params)
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert not {s["id"] for s in items} & hidden_ids(a_spans), params
        assert all(s["visibility"] == "public" or s["tenant_id"] == "globex" for s in items)
    by_trace = b.get("/api/timeline", params={"trace_id": trace}).json()["items"]
    assert [s["id"] for s in by_trace] == [a_spans["public"]["id"]]


def test_b_cannot_execute_a_function_of_a(a_spans, b):
    hidden = b.post("/api/execute", json={"span_id": a_spans["function"]["id"]})
    assert_error(hidden, 404, "NOT_FOUND")
    same_refusal(hidden, b.post("/api/execute", json={"span_id": str(uuid.uuid4())}))


def platform_executions(api: Api, *drafts: dict[str, Any]) -> list[dict[str, Any]]:
    """Executions as the platform records them (the workers sign with the operator key)."""
    with api.kernel() as conn:
        return store.append(conn, [{"entity_type": "execution", "who": "run_code",
                                     "did": "executed", "this": "fn", "owner_id": "alice",
                                     "visibility": "tenant", **d} for d in drafts],
                             keys.operator_key(api.home))


def test_api_metrics_count_only_the_callers_executions(api, a, b):
    platform_executions(
        api, *[{"tenant_id": "acme", "status": "iso_a_only", "duration_ms": 7}] * 3,
        {"tenant_id": "acme", "status": "iso_a_private", "duration_ms": 7,
         "visibility": "private"},
        {"tenant_id": "globex", "status": "iso_b_only", "duration_ms": 9})
    seen_b = {r["status"]: r["count"] for r in b.get("/api/metrics").json()["executions"]}
    assert seen_b.get("iso_b_only") == 1
    assert "iso_a_only" not in seen_b and "iso_a_private" not in seen_b
    seen_a = {r["status"]: r["count"] for r in a.get("/api/metrics").json()["executions"]}
    assert seen_a.get("iso_a_only") == 3 and seen_a.get("iso_a_private") == 1
    assert "iso_b_only" not in seen_a
    # the per-day totals count the same executions
    days_b = b.get("/api/metrics").json()["days"]
    assert sum(r["count"] for r in days_b) == sum(seen_b.values())


def test_b_stream_carries_no_span_of_a_only_its_own_and_public_ones(api, a, key_b):
    with Stream(api, key_b.token) as stream:
        secret = [post(a, visibility=v, entity_type="iso_stream") for v in ("private",
                                                                            "tenant")]
        public = post(a, visibility="public", entity_type="iso_stream")
        own = post(api.client(key_b), visibility="private", entity_type="iso_stream")
        got = [stream.next(), stream.next()]
    assert [e["data"]["id"] for e in got] == [public["id"], own["id"]]
    assert not {s["id"] for s in secret} & {e["data"]["id"] for e in got}


def test_b_replaying_history_on_a_stream_sees_only_what_it_may(api, a_spans, key_b):
    """since=0 replays the whole ledger through B's eyes, with A's trace or type as filter."""
    trace = a_spans["trace"]["trace_id"]
    for query in (f"?since=0&trace_id={trace}", "?since=0&entity_type=iso_note"):
        with Stream(api, key_b.token, query) as stream:
            first = stream.next()
            assert first["data"]["id"] == a_spans["public"]["id"], query
            mine = post(api.client(key_b), entity_type="iso_note", trace_id=trace,
                        visibility="private")
            while (event := stream.next())["data"]["id"] != mine["id"]:
                assert event["data"]["id"] not in hidden_ids(a_spans), query
                assert event["data"]["tenant_id"] == "globex", query


def test_b_cannot_append_as_someone_else(b):
    for fields, named in (({"owner_id": "bob"}, "owner_id"), ({"tenant_id": "acme"}, "tenant_id"),
                          ({"owner_id": "alice", "tenant_id": "acme"}, "tenant_id")):
        response = b.post("/api/spans", json={"entity_type": "note", "who": "alice",
                                              "this": "x", **fields})
        error = assert_error(response, 403, "LEDGER_FORBIDDEN")
        assert named in error["message"]


def test_b_cannot_append_a_version_of_a_public_span_of_a(a_spans, a, b):
    public = a_spans["public"]
    response = b.post("/api/spans", json={
        "id": public["id"], "seq": public["seq"] + 1, "prev_hash": public["curr_hash"],
        "entity_type": public["entity_type"], "who": "alice", "this": "hijacked",
        "visibility": "public"})
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] in ("LEDGER_OWNERSHIP_CHANGE", "LEDGER_FORBIDDEN")
    assert a.get(f"/api/spans/{public['id']}").json()["this"] == "a public"
    # without a pinned seq the server chains it itself: still refused
    response = b.post("/api/spans", json={"id": public["id"], "entity_type": "iso_note",
                                          "who": "alice", "this": "hijacked"})
    assert response.status_code in (403, 409), response.text
    assert a.get(f"/api/spans/{public['id']}").json()["seq"] == public["seq"]


def test_appending_to_a_private_id_of_a_reveals_nothing_about_it(a, b):
    one = post(a, visibility="private")
    two = post(a, visibility="private")
    post(a, id=two["id"], visibility="private", this="v1")
    post(a, id=two["id"], visibility="private", this="v2")
    answers = []
    for span in (one, two):
        response = b.post("/api/spans", json={"id": span["id"], "entity_type": "note",
                                              "who": "alice", "this": "probe"})
        assert response.status_code in (403, 409), response.text
        error = response.json()["error"]
        answers.append((response.status_code, error["code"],
                        error["message"].replace(span["id"], "<id>")))
    assert answers[0] == answers[1]


# --- POST /api/spans ---------------------------------------------------------------------------
def test_a_server_signed_span_verifies_and_carries_the_request_id(api, a):
    request_id = str(uuid.uuid4())
    response = a.post("/api/spans", headers={"X-Request-ID": request_id},
                      json={"entity_type": "note", "who": "alice", "this": "signed by server",
                            "input": {"n": 1, "text": "héllo ✓"}})
    assert response.status_code == 201, response.text
    assert response.headers["x-request-id"] == request_id
    span = response.json()
    assert span["trace_id"] == request_id
    assert (span["owner_id"], span["tenant_id"], span["visibility"]) == ("alice", "acme",
                                                                         "private")
    # The edge key, not the operator key: what a client posts never passes for a platform
    # record.
    assert span["public_key"] == public_key_hex(keys.edge_key(keys.operator_key(api.home)))
    assert span["public_key"] != public_key_hex(keys.operator_key(api.home))
    stored = {f: span[f] for f in FIELDS}
    assert check_proofs(normalise(stored)).ok
    assert a.get(f"/api/spans/{span['id']}").json() == span
    assert a.get(f"/api/verify/{span['id']}").json()["ok"] is True


def test_a_request_without_an_id_gets_one_and_a_bad_one_is_replaced(a):
    response = a.post("/api/spans", json={"entity_type": "note", "who": "a", "this": "x"})
    generated = response.headers["x-request-id"]
    assert str(uuid.UUID(generated)) == generated
    assert response.json()["trace_id"] == generated
    for bad in ("has spaces", "x" * 101, "semi;colon"):
        response = a.get("/api/spans", headers={"X-Request-ID": bad})
        assert response.status_code == 200
        assert str(uuid.UUID(response.headers["x-request-id"])) == \
            response.headers["x-request-id"]


def test_a_span_appended_as_the_next_version_chains(a):
    first = post(a, this="v0")
    second = post(a, id=first["id"], this="v1")
    assert (second["seq"], second["prev_hash"]) == (1, first["curr_hash"])
    versions = a.get(f"/api/spans/{first['id']}?all=1").json()["items"]
    assert [v["this"] for v in versions] == ["v0", "v1"]
    verification = a.get(f"/api/verify/{first['id']}").json()
    assert verification["versions"] == 2 and verification["checks"]["chain"] is True


def test_a_span_signed_by_a_trusted_client_key_is_stored_exactly(api, a):
    client_key = SigningKey.generate()
    api.cli("keys", "trust", public_key_hex(client_key), "--name", "alice laptop")
    span = client_signed(client_key, trace_id=rid("client-trace"))
    assert_stored_exactly(a, span, client_key)


def test_a_client_signed_span_without_a_trace_id_is_stored_exactly(api, a):
    client_key = SigningKey.generate()
    api.cli("keys", "trust", public_key_hex(client_key), "--name", "alice tablet")
    assert_stored_exactly(a, client_signed(client_key), client_key)


def assert_stored_exactly(a: httpx.Client, span: dict[str, Any], client_key: SigningKey) -> None:
    response = a.post("/api/spans", json=span)
    assert response.status_code == 201, response.text
    stored = a.get(f"/api/spans/{span['id']}").json()
    assert {f: stored[f] for f in span} == span
    assert all(stored[f] is None for f in FIELDS if f not in span)
    assert stored["public_key"] == public_key_hex(client_key)
    assert a.get(f"/api/verify/{span['id']}").json()["ok"] is True


def test_a_span_signed_by_an_untrusted_key_is_refused(a):
    span = client_signed(SigningKey.generate(), trace_id=rid("untrusted"))
    error = assert_error(a.post("/api/spans", json=span), 403, "KEY_UNTRUSTED")
    assert "logline keys trust" in error["message"]
    assert_error(a.get(f"/api/spans/{span['id']}"), 404, "NOT_FOUND")


def test_a_client_signed_span_that_was_altered_is_refused(api, a):
    client_key = SigningKey.generate()
    api.cli("keys", "trust", public_key_hex(client_key), "--name", "alice phone")
    span = {**client_signed(client_key, trace_id=rid("t")), "this": "altered after signing"}
    error = assert_error(a.post("/api/spans", json=span), 422, "HASH_MISMATCH")
    assert span["id"] in error["message"]


VALID = {"entity_type": "note", "who": "alice", "this": "x"}


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


BAD_BODIES = [
    # (id, raw body, status, code, a word the message must contain)
    ("truncated", b'{"entity_type": "note",', 400, "BAD_JSON", "JSON"),
    ("empty", b"", 400, "BAD_JSON", "required"),
    ("not-utf8", b"\xff\xfe{}", 400, "BAD_JSON", "utf-8"),
    ("nan", b'{"entity_type":"n","who":"a","this":"x","input":NaN}', 400, "BAD_JSON", "NaN"),
    ("duplicate-key", b'{"entity_type":"n","who":"a","this":"x","this":"y"}', 400,
     "BAD_JSON", "duplicate"),
    ("array", b"[1, 2]", 422, "BAD_FIELD", "body"),
    ("unknown-field", json.dumps({**VALID, "colour": "red"}).encode(), 422, "BAD_FIELD",
     "colour"),
    ("missing-field", b'{"entity_type":"n","who":"a"}', 422, "BAD_FIELD", "this"),
    ("who-is-a-number", json.dumps({**VALID, "who": 5}).encode(), 422, "BAD_FIELD", "who"),
    ("seq-is-text", json.dumps({**VALID, "seq": "one"}).encode(), 422, "BAD_FIELD", "seq"),
    ("negative-seq", json.dumps({**VALID, "seq": -1}).encode(), 422, "BAD_FIELD", "seq"),
    ("fractional-duration", json.dumps({**VALID, "duration_ms": 1.5}).encode(), 422,
     "BAD_FIELD", "duration_ms"),
    ("related-not-list", json.dumps({**VALID, "related_to": "x"}).encode(), 422, "BAD_FIELD",
     "related_to"),
    ("bad-visibility", json.dumps({**VALID, "visibility": "world"}).encode(), 422,
     "BAD_FIELD", "visibility"),
    ("empty-entity-type", json.dumps({**VALID, "entity_type": ""}).encode(), 422,
     "BAD_FIELD", "entity_type"),
    ("nul-in-text", json.dumps({**VALID, "this": "a\u0000b"}).encode(), 422,
     "SPAN_NUL_CHARACTER", "this"),
    ("nul-in-json", json.dumps({**VALID, "input": {"k": "\u0000"}}).encode(), 422,
     "SPAN_NUL_CHARACTER", "input"),
    ("lone-surrogate", b'{"entity_type":"n","who":"a\\ud800","this":"x"}', 422,
     "SPAN_INVALID_UNICODE", "who"),
    ("huge-int-in-json", json.dumps({**VALID, "input": {"n": 10**30}}).encode(), 422,
     "SPAN_INTEGER_RANGE", "input.n"),
    ("huge-seq", json.dumps({**VALID, "seq": 10**20}).encode(), 422, "SPAN_OUT_OF_RANGE",
     "seq"),
    ("huge-duration", json.dumps({**VALID, "duration_ms": 2**31}).encode(), 422,
     "SPAN_OUT_OF_RANGE", "duration_ms"),
    ("infinite-float", b'{"entity_type":"n","who":"a","this":"x","input":1e999}', 422,
     "SPAN_NON_FINITE_NUMBER", "input"),
    ("too-deep", json.dumps({**VALID, "input": nested(70)}).encode(), 422,
     "SPAN_JSON_TOO_DEEP", "input"),
    ("bad-parent", json.dumps({**VALID, "parent_id": "zzz"}).encode(), 422,
     "SPAN_INVALID_UUID", "parent_id"),
    ("bad-related", json.dumps({**VALID, "related_to": ["x"]}).encode(), 422,
     "SPAN_INVALID_UUID", "related_to[0]"),
    ("bad-at", json.dumps({**VALID, "at": "yesterday"}).encode(), 422,
     "SPAN_INVALID_TIMESTAMP", "at"),
    ("long-entity-type", json.dumps({**VALID, "entity_type": "x" * 101}).encode(), 422,
     "BAD_FIELD", "entity_type"),
    ("seq-without-prev", json.dumps({**VALID, "seq": 3}).encode(), 422,
     "SPAN_PREV_HASH_REQUIRED", "prev_hash"),
    ("bad-signature", json.dumps({**VALID, "id": str(uuid.uuid4()), "at": now_at(),
                                  "signature": "ab" * 64, "public_key": "cd" * 32,
                                  "curr_hash": "ef" * 32}).encode(), 422, "HASH_MISMATCH",
     "hash"),
]


@pytest.mark.parametrize(("body", "status", "code", "names"),
                         [pytest.param(*case[1:], id=case[0]) for case in BAD_BODIES])
def test_bad_input_gets_a_4xx_naming_what_is_wrong(a, body, status, code, names):
    response = a.post("/api/spans", content=body, headers={"Content-Type": "application/json"})
    error = assert_error(response, status, code)
    assert names.lower() in error["message"].lower(), error


def test_a_span_with_a_malformed_id_gets_422(a):
    response = a.post("/api/spans", json={**VALID, "id": "nope"})
    error = assert_error(response, 422, "SPAN_INVALID_UUID")
    assert "id" in error["message"]


def test_a_pathologically_nested_body_gets_400(a):
    body = b'{"entity_type":"n","who":"a","this":"x","input":' + b"[" * 100_000 + \
        b"]" * 100_000 + b"}"
    response = a.post("/api/spans", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "BAD_JSON")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          None])
def test_a_body_that_is_not_json_gets_415(api, key_a, content_type):
    headers = {"Authorization": f"Bearer {key_a.token}"}
    if content_type:
        headers["Content-Type"] = content_type
    response = httpx.post(api.url + "/api/spans", content=json.dumps(VALID).encode(),
                          headers=headers, timeout=10)
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    ok = httpx.post(api.url + "/api/spans", content=json.dumps(VALID).encode(), timeout=10,
                    headers={**headers, "Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 201


def raw_request(api: Api, head: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    """Send bytes, read one HTTP/1.1 response (with Content-Length)."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=15) as sock:
        sock.sendall(head.encode() + body)
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += sock.recv(65536)
        header_block, rest = raw.split(b"\r\n\r\n", 1)
        status_line, *lines = header_block.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}
        while len(rest) < int(headers["content-length"]):
            rest += sock.recv(65536)
    return int(status_line.split()[1]), headers, rest


def test_a_declared_body_over_1_mib_gets_413_before_it_is_sent(api, key_a):
    # Only the headers go out: the server must answer from Content-Length alone.
    head = (f"POST /api/spans HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key_a.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {MIB + 1}\r\n\r\n")
    status, headers, body = raw_request(api, head)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "BODY_TOO_LARGE"


def test_a_body_of_exactly_1_mib_is_not_refused_for_its_size(a):
    padding = MIB - len(json.dumps({**VALID, "content": ""}).encode())
    body = json.dumps({**VALID, "content": "x" * padding}).encode()
    assert len(body) == MIB
    response = a.post("/api/spans", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code != 413, response.text


def test_a_chunked_body_over_1_mib_gets_413(api, key_a):
    head = (f"POST /api/spans HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key_a.token}\r\n"
            f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(17)) + b"0\r\n\r\n"
    status, headers, body = raw_request(api, head, chunks)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "BODY_TOO_LARGE"


def test_an_unknown_route_and_a_wrong_method_get_the_error_shape(api, a):
    for response, status, code in ((a.get("/api/nothing-here"), 404, "NOT_FOUND"),
                                   (a.delete("/api/spans"), 405, "METHOD_NOT_ALLOWED")):
        assert response.status_code == status
        assert response.json()["error"]["code"] == code
        assert set(response.json()["error"]) == {"code", "message", "request_id"}


def test_an_unknown_route_echoes_the_request_id_header(a):
    for response in (a.get("/api/nothing-here", headers={"X-Request-ID": rid("r-404")}),
                     a.delete("/api/spans", headers={"X-Request-ID": rid("r-404")})):
        assert response.json()["error"]["request_id"] == rid("r-404")
        assert response.headers.get("x-request-id") == rid("r-404")


@pytest.mark.parametrize(("path", "param"), [
    ("/api/spans", "limit=0"), ("/api/spans", "limit=501"), ("/api/spans", "limit=ten"),
    ("/api/spans", "before=-1"), ("/api/timeline", "since=x"), ("/api/timeline", "limit=1e3"),
    ("/api/metrics", "days=0"), ("/api/metrics", "days=367"),
    ("/api/spans", f"before={10**30}"),
])
def test_bad_query_parameters_get_400(a, path, param):
    error = assert_error(a.get(f"{path}?{param}"), 400, "BAD_QUERY")
    assert param.split("=")[0] in error["message"]


@pytest.mark.parametrize("path", ["/api/spans/not-a-uuid", "/api/verify/123",
                                  "/api/spans/00000000-0000-4000-8000-00000000000g"])
def test_a_malformed_id_in_the_path_gets_400(a, path):
    assert_error(a.get(path), 400, "BAD_ID")


JUNK = ["", "nope", 0, -1, 2**63, 1.5, True, [], {}, ["nope"], "\u0000", "x" * 5000]


@pytest.fixture(scope="module")
def junk_keys(api: Api) -> list[Key]:
    """Writers for the junk battery, so it does not spend the shared keys' rate limits
    (created in-process: `logline apikey create` is tested above and is slower)."""
    from stage0.gov import apikeys

    out = []
    with api.kernel() as conn:
        for _ in range(8):
            token, _span = apikeys.create(conn, keys.operator_key(api.home), "junk", "acme")
            out.append(Key(token, token.split("_")[1], "junk", "acme"))
    return out


def junk_answers(api: Api, key: Key, path: str, base: dict, field: str) -> list[tuple]:
    """(value, status, body) for every junk value of one field that got a 5xx or an answer
    not in the error shape."""
    client, bad = api.client(key), []
    for value in JUNK:
        response = client.post(path, json={**base, field: value})
        body = response.json()
        if response.status_code >= 500 or (response.status_code >= 400 and (
                set(body) != {"error"} or not body["error"].get("code"))):
            bad.append((repr(value)[:20], response.status_code, response.text[:200]))
    return bad


SPAN_FIELDS = list(FIELDS)


@pytest.mark.parametrize("field", SPAN_FIELDS)
def test_no_junk_value_of_a_span_field_gets_a_5xx(api, junk_keys, field):
    key = junk_keys[FIELDS.index(field) % len(junk_keys)]
    assert junk_answers(api, key, "/api/spans", VALID, field) == []


@pytest.mark.parametrize("field", [
    "span_id", "input", "idempotency_key"])
def test_no_junk_value_of_an_execute_field_gets_a_5xx(api, junk_keys, field):
    base = {"span_id": RUN_CODE}
    assert junk_answers(api, junk_keys[len(field) % len(junk_keys)], "/api/execute", base,
                        field) == []


NUL_QUERY = ("stage0/api/app.py Call.query (line 72) hands query values to SQL unchecked; "
             "PostgreSQL refuses NUL in text, so e.g. GET /api/spans?entity_type=%00 answers "
             "500 INTERNAL (psycopg DataError) instead of 400 BAD_QUERY")


@pytest.mark.parametrize("query", ["/api/spans?entity_type=%00", "/api/spans?status=a%00b",
                                   "/api/timeline?entity_type=%00"])
def test_a_nul_in_a_query_filter_gets_400(a, query):
    assert_error(a.get(query), 400, "BAD_QUERY")


def test_a_nul_in_a_stream_filter_gets_400(api):
    key = api.key("nul", "acme")
    with Stream(api, key.token, "?since=0&trace_id=%00") as stream:
        assert stream.status == 400


def test_a_last_event_id_that_is_not_a_position_does_not_crash_the_stream(api):
    key = api.key("lei", "acme")
    head = (f"GET /api/timeline/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{key.token}\r\nLast-Event-ID: \xb2\r\n\r\n")
    with socket.create_connection(("127.0.0.1", api.port), timeout=15) as sock:
        sock.sendall(head.encode("latin-1"))
        status_line = sock.recv(65536).split(b"\r\n", 1)[0]
    assert int(status_line.split()[1]) in (200, 400), status_line


# --- rate limits and the audit trail -----------------------------------------------------------
def audit_spans(api: Api, request_id: str) -> list[dict]:
    with api.kernel() as conn:
        return conn.execute(
            "SELECT entity_type, status, owner_id, tenant_id, visibility, metadata, public_key "
            "FROM ledger.universal_registry WHERE entity_type IN ('audit_denial', "
            "'gate_decision') AND trace_id = %s ORDER BY position", (request_id,)).fetchall()


def test_successful_responses_carry_rate_limit_headers(api):
    client = api.client(api.key("dora", "acme"))
    response = client.get("/api/spans")
    assert response.status_code == 200
    assert int(response.headers["x-ratelimit-limit"]) > 0
    remaining = int(response.headers["x-ratelimit-remaining"])
    assert 0 <= remaining < int(response.headers["x-ratelimit-limit"])
    assert int(response.headers["x-ratelimit-reset"]) >= 0
    assert int(client.get("/api/spans").headers["x-ratelimit-remaining"]) <= remaining
    write = client.post("/api/spans", json=VALID)
    assert write.status_code == 201 and "x-ratelimit-remaining" in write.headers


def test_exhausting_the_write_bucket_gets_429_and_leaves_other_keys_alone(api, b):
    key = api.key("eve", "acme")
    client = api.client(key)
    denied = None
    for _ in range(300):  # a 415 still spends a token, and answers fast
        response = client.post("/api/spans", content=b"x",
                               headers={"Content-Type": "text/plain",
                                        "X-Request-ID": str(uuid.uuid4())})
        if response.status_code == 429:
            denied = response
            break
        assert response.status_code == 415
    assert denied is not None, "the write bucket never ran out"
    error = assert_error(denied, 429, "RATE_LIMITED")
    assert "write" in error["message"]
    assert int(denied.headers["retry-after"]) >= 1
    assert denied.headers["x-ratelimit-remaining"] == "0"
    assert int(denied.headers["x-ratelimit-limit"]) > 0
    assert int(denied.headers["x-ratelimit-reset"]) >= 1
    # reads are another bucket; other keys are untouched
    assert client.get("/api/spans").status_code == 200
    assert b.post("/api/spans", json=VALID).status_code == 201
    [audit] = audit_spans(api, denied.headers["x-request-id"])
    assert audit["metadata"]["code"] == "RATE_LIMITED" and audit["status"] == "denied"
    assert audit["metadata"]["path"] == "/api/spans"


def test_a_denial_of_a_known_caller_is_attributed_to_that_caller(api):
    key = api.key("gina", "acme", "reader")
    response = api.client(key).post("/api/spans", json=VALID,
                                    headers={"X-Request-ID": rid("audit-who-1")})
    assert response.status_code == 403
    [span] = audit_spans(api, rid("audit-who-1"))
    assert span["metadata"]["code"] == "G_ROLE_DENIED"
    assert span["entity_type"] == "gate_decision"  # the gate refused: its decision is the span
    assert (span["owner_id"], span["tenant_id"], span["metadata"]["key_id"]) == (
        "gina", "acme", key.key_id)


def test_denials_of_known_callers_are_recorded_as_audit_spans(api, a):
    """(Anonymous denials are counted into audit_summary spans instead: test_edge.py.)"""
    anon = httpx.get(api.url + "/api/timeline", headers={"X-Request-ID": rid("audit-anon-1")},
                     timeout=10)
    assert anon.status_code == 401
    assert audit_spans(api, rid("audit-anon-1")) == []

    reader = api.client(api.key("fred", "acme", "reader"))
    response = reader.post("/api/spans", json=VALID, headers={"X-Request-ID": rid("audit-role-1")})
    assert response.status_code == 403
    [span] = audit_spans(api, rid("audit-role-1"))
    assert span["metadata"]["code"] == "G_ROLE_DENIED"

    response = a.post("/api/spans", json={**VALID, "tenant_id": "globex"},
                      headers={"X-Request-ID": rid("audit-forbidden-1")})
    assert response.status_code == 403
    [span] = audit_spans(api, rid("audit-forbidden-1"))
    assert span["metadata"]["code"] == "LEDGER_FORBIDDEN"
    assert (span["owner_id"], span["tenant_id"]) == ("alice", "acme")

    assert span["metadata"]["path"] == "/api/spans" and span["visibility"] == "private"
    # the denial spans are signed like every other span
    assert span["public_key"] == public_key_hex(keys.operator_key(api.home))


# --- SSE ------------------------------------------------------------------------------------------
def test_sse_event_ids_are_global_positions(api):
    key = api.key("sse1", "sse-tenant-1")
    client = api.client(key)
    with Stream(api, key.token) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        posted = [post(client, entity_type="sse_pos", visibility="tenant") for _ in range(3)]
        events = stream.take(3)
    assert [e["id"] for e in events] == [p["position"] for p in posted]
    assert [e["data"]["id"] for e in events] == [p["id"] for p in posted]
    assert [e["data"]["position"] for e in events] == [p["position"] for p in posted]
    assert {e["event"] for e in events} == {"span"}


def test_sse_resumes_after_last_event_id_without_gaps_or_duplicates(api):
    """Connect, read a few, drop the connection, let spans be appended meanwhile, reconnect
    with Last-Event-ID: the events seen over all connections are exactly the spans appended,
    in order, once each, while another writer appends all along."""
    key = api.key("sse2", "sse-tenant-2")
    tag = f"sse_resume_{uuid.uuid4().hex[:6]}"
    stop, trickled = threading.Event(), []

    def trickle() -> None:
        while not stop.is_set():
            trickled.extend(append_as(api, key, 1, tag))
            stop.wait(0.02)

    writer = threading.Thread(target=trickle)
    appended = append_as(api, key, 6, tag)
    writer.start()
    try:
        with Stream(api, key.token, f"?entity_type={tag}&since=0") as stream:
            received = stream.take(3)
        for _ in range(6):
            appended += append_as(api, key, 4, tag)  # while disconnected
            with Stream(api, key.token, f"?entity_type={tag}",
                        last_event_id=str(received[-1]["id"])) as stream:
                appended += append_as(api, key, 2, tag)  # while connected
                received += stream.take(5)
    finally:
        stop.set()
        writer.join()
    everything = sorted(appended + trickled, key=lambda s: s["position"])
    with Stream(api, key.token, f"?entity_type={tag}",
                last_event_id=str(received[-1]["id"])) as stream:
        received += stream.take(len(everything) - len(received))
    assert [e["id"] for e in received] == [s["position"] for s in everything]
    assert [e["data"]["id"] for e in received] == [s["id"] for s in everything]
    assert len({e["id"] for e in received}) == len(received)


def test_sse_since_starts_after_the_given_position(api):
    key = api.key("sse3", "sse-tenant-3")
    spans = append_as(api, key, 5, "sse_since")
    with Stream(api, key.token, f"?since={spans[1]['position']}") as stream:
        events = stream.take(3)
    assert [e["data"]["id"] for e in events] == [s["id"] for s in spans[2:]]


def test_sse_without_a_start_begins_at_the_tip(api):
    key = api.key("sse4", "sse-tenant-4")
    old = append_as(api, key, 2, "sse_tip")
    with Stream(api, key.token) as stream:
        new = append_as(api, key, 1, "sse_tip")
        event = stream.next()
    assert event["data"]["id"] == new[0]["id"]
    assert event["id"] > old[-1]["position"]


def test_sse_filters_by_entity_type_and_trace_id(api):
    key = api.key("sse5", "sse-tenant-5")
    with Stream(api, key.token, "?entity_type=sse_wanted") as by_type, \
            Stream(api, key.token, f"?trace_id={rid('trace-wanted')}") as by_trace:
        append_as(api, key, 2, "sse_other")
        append_as(api, key, 1, "sse_other", trace_id=rid("trace-other"))
        wanted_type = append_as(api, key, 1, "sse_wanted")
        wanted_trace = append_as(api, key, 1, "sse_other", trace_id=rid("trace-wanted"))
        last = append_as(api, key, 1, "sse_wanted", trace_id=rid("trace-wanted"))
        got_type = by_type.take(2)
        got_trace = by_trace.take(2)
    assert [e["data"]["id"] for e in got_type] == [wanted_type[0]["id"], last[0]["id"]]
    assert [e["data"]["id"] for e in got_trace] == [wanted_trace[0]["id"], last[0]["id"]]


def test_sse_anonymous_and_bad_since_are_refused(api):
    with Stream(api, None) as anon:
        assert anon.status == 401 and anon.json()["error"]["code"] == "AUTH_REQUIRED"
        assert anon.headers["www-authenticate"] == "Bearer"
    key = api.key("sse6", "sse-tenant-6")
    with Stream(api, key.token, "?since=minus-one") as bad:
        assert bad.status == 400 and bad.json()["error"]["code"] == "BAD_QUERY"


@pytest.mark.slow
def test_sse_sends_keep_alive_comments(api):
    key = api.key("sse7", "sse-tenant-7")
    with Stream(api, key.token) as stream:
        try:
            comment = stream.comments.get(timeout=20)  # the server pings every 15 s
        except queue.Empty:
            raise AssertionError("no keep-alive comment in 20 s") from None
        assert comment.startswith(":")
        assert not stream.ended.is_set()


def test_the_sse_client_gauge_goes_up_and_back_down(api):
    key = api.key("sse8", "sse-tenant-8")
    base = api.metric("logline_sse_clients")
    streams = [Stream(api, key.token) for _ in range(2)]
    try:
        wait_for(lambda: api.metric("logline_sse_clients") == base + 2, 5, "gauge up")
    finally:
        for stream in streams:
            stream.close()
    wait_for(lambda: api.metric("logline_sse_clients") == base, 10, "gauge back down")


@pytest.mark.slow
def test_a_stalled_sse_client_is_dropped_without_slowing_another(api):
    stalled_key = api.key("slow", "sse-stalled")
    other_key = api.key("fast", "sse-other")
    base = api.metric("logline_sse_clients")
    with Stream(api, other_key.token) as other:
        def delivery_s() -> float:
            """Seconds from starting an append to its event reaching the other client."""
            sent = time.monotonic()
            [marker] = append_as(api, other_key, 1, "sse_marker")
            event = other.next(timeout=10)
            assert event["data"]["id"] == marker["id"]
            return event["received"] - sent

        before = delivery_s()
        stalled = Stream(api, stalled_key.token, read=False, rcvbuf=4096)
        try:
            wait_for(lambda: api.metric("logline_sse_clients") == base + 2, 5, "both on")
            # ~12 MB for a client that never reads: far beyond every socket buffer
            for _ in range(6):
                append_as(api, stalled_key, 10, "sse_flood", content={"pad": "x" * 200_000})
            during = [delivery_s() for _ in range(5)]
            assert api.metric("logline_sse_clients") == base + 2  # still connected
            # the server gives up on the stalled client (send timeout 5 s), not on the other
            wait_for(lambda: api.metric("logline_sse_clients") == base + 1, 20,
                     "the stalled client dropped")
            after = delivery_s()
        finally:
            stalled.close()
    assert max(during) < max(0.5, 10 * before), (before, during)
    assert after < max(0.5, 10 * before)


# --- SSE: clients that share a read (same principal and filters) and clients that do not ----
def events_until(stream: Stream, marker: dict, timeout: float = 15) -> list[dict[str, Any]]:
    """Every event up to and including the one for `marker` (a span)."""
    events = []
    while not events or events[-1]["data"]["id"] != marker["id"]:
        events.append(stream.next(timeout))
    return events


def positions(events: list[dict[str, Any]]) -> list[int]:
    return [e["id"] for e in events]


def test_sse_users_of_one_tenant_each_see_only_their_own_private_spans(api):
    """Two clients of one user (they may share a read) and one of another user in the same
    tenant: each stream holds exactly the tenant's spans and its own user's private ones."""
    one, two = api.key("sse-priv-1", "sse-private"), api.key("sse-priv-2", "sse-private")
    with Stream(api, one.token) as s1, Stream(api, one.token) as s1_again, \
            Stream(api, two.token) as s2:
        spans = []
        for _ in range(3):
            spans += append_as(api, one, 2, "sse_priv", visibility="private")
            spans += append_as(api, two, 1, "sse_priv", visibility="private")
            spans += append_as(api, one, 1, "sse_priv")  # visibility tenant
        [marker] = append_as(api, two, 1, "sse_priv")
        got = {"one": events_until(s1, marker), "one again": events_until(s1_again, marker),
               "two": events_until(s2, marker)}
    for name, user in (("one", "sse-priv-1"), ("one again", "sse-priv-1"),
                       ("two", "sse-priv-2")):
        mine = [s["position"] for s in [*spans, marker]
                if s["visibility"] == "tenant" or s["owner_id"] == user]
        assert positions(got[name]) == mine, name
    assert {e["data"]["owner_id"] for e in got["two"] if e["data"]["visibility"] ==
            "private"} == {"sse-priv-2"}


def test_sse_clients_of_one_user_with_different_filters_each_see_exactly_their_rows(api):
    key = api.key("sse-filters", "sse-filters")
    trace, other = rid("sse-f-trace"), rid("sse-f-other")
    queries = {"all": "", "type": "?entity_type=sse_f_a", "trace": f"?trace_id={trace}",
               "both": f"?entity_type=sse_f_a&trace_id={trace}"}
    streams = {name: Stream(api, key.token, query) for name, query in queries.items()}
    try:
        spans = []
        for entity_type in ("sse_f_a", "sse_f_b"):
            spans += append_as(api, key, 2, entity_type)
            spans += append_as(api, key, 1, entity_type, trace_id=trace)
            spans += append_as(api, key, 1, entity_type, trace_id=other)
        [marker] = append_as(api, key, 1, "sse_f_a", trace_id=trace)
        got = {name: events_until(stream, marker) for name, stream in streams.items()}
    finally:
        for stream in streams.values():
            stream.close()
    wanted = {"all": lambda s: True, "type": lambda s: s["entity_type"] == "sse_f_a",
              "trace": lambda s: s.get("trace_id") == trace,
              "both": lambda s: s["entity_type"] == "sse_f_a" and s.get("trace_id") == trace}
    for name, keep in wanted.items():
        expected = [s["position"] for s in [*spans, marker] if keep(s)]
        assert positions(got[name]) == expected, name
    assert len(got["both"]) == 2 and len(got["all"]) == len(spans) + 1


def test_sse_a_client_resuming_from_an_old_id_beside_a_live_one_of_the_same_key(api):
    """A client of the same key and filter as a live one resumes from an old Last-Event-ID
    (more than one read's worth behind) while spans keep arriving: it catches up and then
    follows the live edge with no gap and no duplicate; the live client is unaffected."""
    key = api.key("sse-resume-live", "sse-resume-live")
    tag = f"sse_rl_{uuid.uuid4().hex[:6]}"
    query = f"?entity_type={tag}"
    history = append_as(api, key, 260, tag)  # SSE_BATCH is 200: the catch-up takes 2 reads
    stop, trickled = threading.Event(), []

    def trickle() -> None:
        while not stop.is_set():
            trickled.extend(append_as(api, key, 1, tag))
            stop.wait(0.01)

    with Stream(api, key.token, query) as live:
        writer = threading.Thread(target=trickle)
        writer.start()
        try:
            first = live.next()  # the live client's group is reading by now
            resumed = Stream(api, key.token, query, last_event_id=str(history[9]["position"]))
            with resumed:
                got_resumed = resumed.take(5)
                # the group moves on while the resumed client catches up
                moved = len(trickled) + 20
                wait_for(lambda: len(trickled) >= moved, 20, "20 more spans trickled")
                stop.set()
                writer.join()
                [marker] = append_as(api, key, 1, tag)
                got_resumed += events_until(resumed, marker)
            got_live = [first, *events_until(live, marker)]
        finally:
            stop.set()
            writer.join()
    everything = [s["position"] for s in [*history, *trickled, marker]]
    assert positions(got_resumed) == [p for p in everything if p > history[9]["position"]]
    assert positions(got_live) == [p for p in everything if p > history[-1]["position"]]


def test_sse_group_members_get_exactly_the_rows_after_their_own_cursor(api):
    """The hub, driven by hand (no LISTEN, so the test decides when the group reads): a
    client behind its group may not join until it has caught up on its own; one that joins
    ahead of the group's cursor gets only the rows after its own."""
    import asyncio

    from stage0.api.broadcast import Broadcaster
    from stage0.api.stream import Hub, Member, read

    key = api.key("sse-hub", "sse-hub")
    group_key = ("sse-hub", "sse-hub", "sse_hub", None)  # tenant, user, entity_type, trace_id

    async def given(member: Member) -> list[int]:
        await asyncio.wait_for(member.ready.wait(), 10)
        member.ready.clear()
        return [int(line[4:]) for line in member.take().decode().splitlines()
                if line.startswith("id: ")]

    async def main() -> None:
        broadcaster = Broadcaster(api.database)
        await broadcaster.live_pool.open(wait=True)
        await broadcaster.pool.open(wait=True)
        hub = Hub(broadcaster, lambda *args, **fields: None, lambda tokens: {})
        try:
            a = [s["position"] for s in append_as(api, key, 3, "sse_hub")]
            live = Member(group_key, a[0])
            assert hub.join(live)  # a new group at live's cursor, read at once
            assert await given(live) == a[1:]
            behind = Member(group_key, a[0])
            assert not hub.join(behind)  # it must read a[1:] on its own first
            b = [s["position"] for s in append_as(api, key, 2, "sse_hub")]  # no wake-up
            ahead = Member(group_key, b[0])  # as if its own read had seen b[0]
            assert hub.join(ahead)
            hub.mark(live.group)
            assert await given(live) == b
            assert await given(ahead) == b[1:]
            rows, tip = await read(broadcaster, group_key, behind.cursor)
            assert [p for p, _ in rows] == a[1:] + b and tip >= b[-1]
            behind.cursor = rows[-1][0]
            assert hub.join(behind)
            c = [s["position"] for s in append_as(api, key, 1, "sse_hub")]
            hub.mark(live.group)
            for member in (live, ahead, behind):
                assert await given(member) == c
        finally:
            await hub.stop()
            await broadcaster.live_pool.close()
            await broadcaster.pool.close()

    asyncio.run(main())


def test_a_client_whose_queue_overflows_is_dropped_and_its_group_mate_is_not(api):
    """Two clients of one key and filter share every read; one never reads its socket. When
    what waits for it passes the queue limit (8 MiB) it is disconnected at once (not after
    the 5 s send timeout), and the other still receives every event."""
    key = api.key("sse-overflow", "sse-overflow")
    query = "?entity_type=sse_big"
    base = api.metric("logline_sse_clients")
    drops_before = api.log.read_text().count('"queue_full"')
    with Stream(api, key.token, query) as live:
        stalled = Stream(api, key.token, query, read=False, rcvbuf=4096)
        try:
            wait_for(lambda: api.metric("logline_sse_clients") == base + 2, 5, "both on")
            flood = []
            for _ in range(5):  # 5 x 5 MB: one in the socket, one in a write, the rest queued
                flood += append_as(api, key, 20, "sse_big", content={"pad": "x" * 250_000})
            wait_for(lambda: api.metric("logline_sse_clients") == base + 1, 4,
                     "the stalled client dropped")
            [marker] = append_as(api, key, 1, "sse_big")
            got = events_until(live, marker, timeout=30)
        finally:
            stalled.close()
    assert positions(got) == [s["position"] for s in [*flood, marker]]
    assert api.log.read_text().count('"queue_full"') == drops_before + 1


# --- execution --------------------------------------------------------------------------------
def test_execute_schedules_once_per_idempotency_key_and_a_worker_runs_it(api, a):
    function = post(a, entity_type="function", name="echo", code=ECHO, language="python",
                    visibility="tenant", status="active")
    idem = f"idem-{uuid.uuid4().hex}"
    first = a.post("/api/execute", headers={"X-Request-ID": rid("exec-trace-1")},
                   json={"span_id": function["id"], "input": {"n": 7}, "idempotency_key": idem})
    assert first.status_code == 202, first.text
    scheduled = first.json()
    assert scheduled["status"] == "scheduled" and scheduled["trace_id"] == rid("exec-trace-1")
    again = a.post("/api/execute", json={"span_id": function["id"], "input": {"n": 7},
                                         "idempotency_key": idem})
    assert again.status_code == 202
    assert again.json()["request_id"] == scheduled["request_id"]
    request = a.get(f"/api/spans/{scheduled['request_id']}").json()
    assert (request["entity_type"], request["status"], request["parent_id"]) == (
        "request", "scheduled", function["id"])

    ran: set[str] = set()
    with Loader(api.database, api.home) as loader:
        for _ in range(20):  # FIFO: other tests' requests may be queued before ours
            out = loader.boot(KERNELS["request_worker"], {"batch": 32})
            ran |= {e["request_id"] for e in out["executions"]}
            if scheduled["request_id"] in ran or not out["claimed"]:
                break
    assert scheduled["request_id"] in ran

    request = a.get(f"/api/spans/{scheduled['request_id']}").json()
    assert request["status"] == "complete"
    executions = [e for e in a.get("/api/spans", params={"entity_type": "execution",
                                                         "limit": 500}).json()["items"]
                  if scheduled["request_id"] in (e["related_to"] or [])]
    assert len(executions) == 1
    assert executions[0]["output"] == {"echo": {"n": 7}}
    assert executions[0]["trace_id"] == rid("exec-trace-1")
    trace = a.get("/api/timeline", params={"trace_id": rid("exec-trace-1")}).json()["items"]
    assert {"request", "execution"} <= {s["entity_type"] for s in trace}


def test_execute_refuses_what_is_not_a_function(a):
    note = post(a, visibility="tenant")
    assert_error(a.post("/api/execute", json={"span_id": note["id"]}), 404,
                 "FUNCTION_NOT_FOUND")
    assert_error(a.post("/api/execute", json={"span_id": "nope"}), 400, "BAD_ID")
    assert_error(a.post("/api/execute", json={"span_id": note["id"], "extra": 1}), 422,
                 "BAD_FIELD")


# --- verification ------------------------------------------------------------------------------
def test_verify_reports_ok_and_then_a_superuser_edit(api, a):
    span = post(a, this="honest", visibility="tenant")
    verification = a.get(f"/api/verify/{span['id']}").json()
    assert verification["ok"] is True and verification["reason"] is None
    assert verification["checks"] == {"hash": True, "signature": True, "trusted_key": True,
                                      "chain": True}
    with api.database.connect("admin") as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("UPDATE ledger.universal_registry SET this = 'edited' WHERE id = %s",
                     (span["id"],))
    assert a.get(f"/api/spans/{span['id']}").json()["this"] == "edited"
    verification = a.get(f"/api/verify/{span['id']}").json()
    assert verification["ok"] is False
    assert verification["checks"]["hash"] is False
    assert verification["reason"] == "HASH_MISMATCH"


def test_verify_does_not_call_a_chain_broken_because_an_old_version_is_private(a, b):
    draft = post(a, entity_type="doc", this="draft", visibility="private")
    published = post(a, id=draft["id"], entity_type="doc", this="published",
                     visibility="public")
    assert a.get(f"/api/verify/{draft['id']}").json()["ok"] is True
    seen_by_b = b.get(f"/api/verify/{published['id']}").json()
    assert seen_by_b["checks"]["hash"] and seen_by_b["checks"]["signature"]
    assert seen_by_b["reason"] != "CHAIN_BROKEN"
    assert seen_by_b["checks"].get("chain") is not False


# --- metrics and the OpenAPI document ----------------------------------------------------------
def test_metrics_are_prometheus_text_with_every_family(api, a):
    from prometheus_client.parser import text_string_to_metric_families

    platform_executions(api, {"tenant_id": "acme", "status": "complete", "duration_ms": 3})
    httpx.get(api.url + "/api/spans", timeout=10)  # a denial, so the counter has a sample
    assert httpx.get(api.url + "/metrics", timeout=10).status_code == 401
    before = api.scrape()
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(before.text)}
    assert {"logline_http_requests", "logline_http_request_seconds", "logline_sse_clients",
            "logline_denials", "logline_executions"} <= set(families)
    assert families["logline_http_request_seconds"].type == "histogram"
    assert families["logline_sse_clients"].type == "gauge"
    assert any(s.labels.get("code") == "AUTH_REQUIRED" for s in
               families["logline_denials"].samples)
    assert any(s.labels.get("status") == "complete" and s.value >= 1 for s in
               families["logline_executions"].samples)

    def count(text: str) -> float:
        return sum(s.value for f in text_string_to_metric_families(text)
                   if f.name == "logline_http_requests" for s in f.samples
                   if s.name.endswith("_total") and s.labels == {
                       "route": "/api/timeline", "method": "GET", "status": "200"})

    a.get("/api/timeline")
    a.get("/api/timeline")
    assert count(api.scrape().text) == count(before.text) + 2


def test_openapi_is_a_valid_3_1_document_of_exactly_the_routes_served(api):
    from openapi_spec_validator import validate

    from stage0.api.app import create_app
    from stage0.api.state import ServerState

    doc = httpx.get(api.url + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == set(PROTECTED) | set(PUBLIC)
    for (method, path), op in ((k, doc["paths"][k[1]][k[0].lower()]) for k in documented):
        assert op["responses"], (method, path)
        assert ("security" in op) == ((method, path) in PROTECTED), (method, path)
        # every documented route is served: anonymously, 401 or 200, never "no such route"
        response = httpx.request(method, api.url + path.replace("{id}", str(uuid.uuid4())),
                                 timeout=10)
        assert response.status_code == (401 if (method, path) in PROTECTED else 200)
    # every route the application serves is documented (except the document, the metrics
    # and the console themselves)
    app = create_app(ServerState(api.database, api.home))
    served = {(m, r.path) for r in app.routes for m in (getattr(r, "methods", None) or {"*"})
              if m != "HEAD"}
    undocumented = {p for m, p in served if (m, p) not in documented}
    assert undocumented <= {"/openapi.json", "/metrics", "/", "/static"}, undocumented
