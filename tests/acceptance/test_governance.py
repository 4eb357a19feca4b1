"""Governed execution end to end, as its users meet it: a real `logline serve`, real API
keys, the real `logline agent` (a subprocess working in a temporary folder), over HTTP.

Tenants acme (A) and globex (B). In A a requester asks, in a sentence, to delete the
duplicates in photos/; the agent plans it; the requester cannot approve it (SoD), nor can the
agent; an approver sees the plan and approves; the agent executes exactly that plan; the
files are in the trash and come back with `restore`; the audit export holds every step and
verifies. B sees none of it and its agent can claim none of it. Then the refusals a hostile
or careless client meets, each with its documented reason code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import REPO
from helpers.api import Api, Key, start_api
from helpers.governed import Tenant, http, personal_ops_as

pytestmark = pytest.mark.slow
PHOTO = b"\xff\xd8 the same picture " * 100
OTHER = b"\xff\xd8 another picture " * 50


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory) -> Iterator[Api]:
    yield from start_api(server, template, tmp_path_factory.mktemp("gov"))


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text
    return response.json()["error"]["message"]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".logline-trash" not in p.parts}


def publish_and_activate(api: Api, tenant: Tenant, contract: dict) -> None:
    admin = http(api, tenant.admin)
    published = admin.post("/api/contracts", json={"contract": contract})
    assert published.status_code == 201, published.text
    activated = admin.post("/api/contracts/activate",
                           json={"ref": f"{contract['name']}@{contract['version']}"})
    assert activated.status_code == 200, activated.text


@pytest.fixture(scope="module")
def tenants(api, tmp_path_factory):
    base = tmp_path_factory.mktemp("tenants")
    return Tenant(api, "acme", base), Tenant(api, "globex", base)


@pytest.fixture(scope="module")
def story(api, tenants):
    """The whole governed request in A, step by step; each step's answer kept for the tests."""
    a, b = tenants
    (a.root / "photos" / "2024").mkdir(parents=True)
    (a.root / "photos" / "a.jpg").write_bytes(PHOTO)
    (a.root / "photos" / "b.jpg").write_bytes(PHOTO)
    (a.root / "photos" / "2024" / "c.jpg").write_bytes(PHOTO)
    os.utime(a.root / "photos" / "2024" / "c.jpg", (10**9, 10**9))  # the oldest copy
    (a.root / "photos" / "other.jpg").write_bytes(OTHER)
    (b.root / "photos").mkdir()
    (b.root / "photos" / "x.jpg").write_bytes(PHOTO)
    (b.root / "photos" / "y.jpg").write_bytes(PHOTO)
    s: dict = {"before": files(a.root), "b_before": files(b.root)}

    requester, approver = http(api, a.requester), http(api, a.approver)
    asked = requester.post("/api/intents", json={"text": "delete duplicates in photos/"})
    s["asked"] = asked
    proposal = asked.json()["proposal_id"]
    s["own_approval_early"] = requester.post(f"/api/approvals/{proposal}", json={
        "decision": "approve", "reason": "mine"})
    s["approval_before_plan"] = approver.post(f"/api/approvals/{proposal}", json={
        "decision": "approve", "reason": "too early"})
    s["plan_log"] = a.run_agent()
    s["inbox"] = approver.get("/api/approvals", params={"state": "pending"}).json()["items"]
    s["own_approval"] = requester.post(f"/api/approvals/{proposal}", json={
        "decision": "approve", "reason": "I approve my own request"})
    s["agent_approval"] = http(api, a.agent).post(f"/api/approvals/{proposal}", json={
        "decision": "approve", "reason": "the agent approves"})
    s["b_inbox"] = http(api, b.approver).get("/api/approvals").json()["items"]
    s["b_approval"] = http(api, b.approver).post(f"/api/approvals/{proposal}", json={
        "decision": "approve", "reason": "not my tenant"})
    s["b_claim"] = http(api, b.agent).post("/api/jobs/claim", json={"limit": 10}).json()
    s["approved"] = approver.post(f"/api/approvals/{proposal}", json={
        "decision": "approve", "reason": "duplicates, fine"})
    s["replayed"] = approver.post(f"/api/approvals/{proposal}", json={
        "decision": "approve", "reason": "again"})
    s["run_log"] = a.run_agent()
    s["after"] = files(a.root)
    s["state"] = approver.get(f"/api/proposals/{proposal}").json()
    s["proposal"] = proposal
    s["trace"] = asked.json()["trace_id"]
    return s


# --- the story ----------------------------------------------------------------------------
def test_a_sentence_becomes_a_proposal_pending_approval(story):
    answer = story["asked"]
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["parsed"] == {"action": "personal_ops.delete_duplicates",
                              "args": {"path": "photos"}}
    assert (body["outcome"], body["reason"]) == ("PENDING_APPROVAL", "G_APPROVAL_REQUIRED")
    assert body["contract"] == "personal_ops@1.0.0" and body["required"] == 1


def test_the_requester_can_never_approve_their_own_request(story):
    error(story["own_approval_early"], 403, "G_SOD_VIOLATION")
    error(story["own_approval"], 403, "G_SOD_VIOLATION")


def test_the_agent_can_never_approve(story):
    error(story["agent_approval"], 403, "G_SOD_VIOLATION")


def test_approval_waits_for_the_agents_plan(story):
    error(story["approval_before_plan"], 409, "G_PLAN_PENDING")


def test_the_approver_sees_what_will_happen(story):
    [item] = story["inbox"]
    assert item["id"] == story["proposal"] and item["state"] == "pending"
    plan = {op["path"]: op for op in item["plan"]}
    # The oldest of the three identical photos is kept, the two others go; other.jpg stays.
    assert sorted(plan) == ["photos/a.jpg", "photos/b.jpg"]
    assert all(op["op"] == "trash" and op["size"] == len(PHOTO) for op in plan.values())
    assert {(op["duplicate_of"], op["kept_because"]) for op in plan.values()} == {
        ("photos/2024/c.jpg", "older")}


def test_an_approved_plan_runs_and_the_files_go_to_the_trash(story, tenants):
    a, _ = tenants
    approved = story["approved"].json()
    assert (approved["outcome"], approved["reason"]) == ("ALLOW", "G_APPROVED")
    assert approved["job_id"]
    assert set(story["before"]) - set(story["after"]) == {"photos/a.jpg", "photos/b.jpg"}
    assert story["after"]["photos/2024/c.jpg"] == PHOTO and "photos/other.jpg" in story["after"]
    state = story["state"]
    assert state["state"] == "done", state
    results = state["jobs"]["execute"]["result"]["output"]["results"]
    assert {r["path"] for r in results} == {"photos/a.jpg", "photos/b.jpg"}
    for r in results:  # each result names the file's hash before and after the move
        assert r["status"] == "done" and r["blake3_before"] == r["blake3_after"]
        assert r["to"].startswith(".logline-trash/")
        assert (a.root / r["to"]).read_bytes() == PHOTO


def test_an_agent_identity_cannot_approve_with_another_key(api, tenants):
    """SoD binds the person, not the key: `bot` runs the agent, so a second key of `bot`
    with the approver role still may not approve."""
    a, _ = tenants
    (a.root / "sod.txt").write_text("s")
    answer = http(api, a.requester).post("/api/proposals", json={
        "action": "personal_ops.rename", "args": {"path": "sod.txt",
                                                  "new_name": "sod2.txt"}}).json()
    a.run_agent()
    bot_as_approver = api.key("bot", "acme", "approver", "reader")
    error(http(api, bot_as_approver).post(f"/api/approvals/{answer['proposal_id']}", json={
        "decision": "approve", "reason": "I am the agent"}), 403, "G_SOD_VIOLATION")


def test_a_request_can_be_rejected_while_the_agent_is_still_planning(api, tenants):
    a, _ = tenants
    answer = http(api, a.requester).post("/api/proposals", json={
        "action": "personal_ops.delete", "args": {"paths": ["nothing-yet.txt"]}}).json()
    rejected = http(api, a.approver).post(f"/api/approvals/{answer['proposal_id']}", json={
        "decision": "reject", "reason": "no"})
    assert rejected.json()["reason"] == "G_REJECTED", rejected.text
    a.run_agent()  # the plan job still runs (and fails: no such file); the request stays
    state = http(api, a.viewer).get(f"/api/proposals/{answer['proposal_id']}").json()
    assert state["state"] == "rejected" and "execute" not in state["jobs"]


def test_a_replayed_approval_is_refused(story):
    error(story["replayed"], 409, "G_APPROVAL_REPLAYED")


def test_trashed_files_are_restored_byte_for_byte(api, story, tenants):
    a, _ = tenants
    answer = http(api, a.requester).post("/api/proposals", json={
        "action": "personal_ops.restore", "args": {"paths": ["photos/b.jpg",
                                                            "photos/a.jpg"]}})
    assert answer.status_code == 201 and answer.json()["outcome"] == "ALLOW", answer.text
    a.run_agent()
    photos = {k: v for k, v in files(a.root).items() if k.startswith("photos/")}
    assert photos == story["before"]


def test_the_audit_export_shows_every_step_and_verifies(api, story, tenants, tmp_path):
    a, _ = tenants
    viewer = http(api, a.viewer)
    export = viewer.get("/api/audit/export", params={"trace_id": story["trace"]})
    assert export.status_code == 200
    assert export.headers["content-type"].startswith("application/x-ndjson")
    spans = [json.loads(line) for line in export.text.splitlines()]
    kinds = [s["entity_type"] for s in spans]
    # proposal -> gate decision -> approval request -> plan job -> claim -> result (the plan)
    # -> refusals -> approval -> gate decision -> execute job -> claim -> result
    for kind in ("gate_decision", "approval_request", "job", "job_claim", "job_result",
                 "approval"):
        assert kind in kinds, kinds
    assert kinds.count("job") == 2 and kinds.count("job_result") == 2
    refused = [s["content"]["reason"] for s in spans if s["entity_type"] == "gate_decision"
               and s["status"] == "deny"]
    assert {"G_SOD_VIOLATION", "G_PLAN_PENDING", "G_APPROVAL_REPLAYED"} <= set(refused)
    [approval] = [s for s in spans if s["entity_type"] == "approval"]
    assert (approval["who"], approval["owner_id"], approval["status"]) == (
        "paula", "paula", "approved")
    path = tmp_path / "trail.jsonl"
    path.write_text(export.text)
    check = api.cli("verify", "--export", str(path))
    assert f"ok: {len(spans)} exported span(s) verify" in check.stdout
    # The same trail from the operator's CLI, as CSV.
    csv_text = api.cli("audit", "export", "--tenant", "acme", "--trace", story["trace"],
                       "--format", "csv").stdout
    assert csv_text.splitlines()[0].startswith("position,id,seq,at,entity_type")
    assert len(csv_text.splitlines()) == len(spans) + 1


def test_a_tampered_export_line_fails_verification(api, story, tenants, tmp_path):
    a, _ = tenants
    text = http(api, a.viewer).get("/api/audit/export",
                                   params={"trace_id": story["trace"]}).text
    lines = text.splitlines()
    span = json.loads(lines[0])
    span["status"] = "allow"  # what a forger would change
    lines[0] = json.dumps(span)
    path = tmp_path / "forged.jsonl"
    path.write_text("\n".join(lines) + "\n")
    proc = api.cli("verify", "--export", str(path), check=False)
    assert proc.returncode == 1
    assert f"FAIL {path}:1 {span['id']} HASH_MISMATCH" in proc.stdout


# --- tenant isolation ---------------------------------------------------------------------
def test_the_other_tenant_saw_nothing_and_could_touch_nothing(api, story, tenants):
    a, b = tenants
    assert story["b_inbox"] == []
    error(story["b_approval"], 404, "NOT_FOUND")
    assert story["b_claim"] == {"jobs": []}
    assert files(b.root) == story["b_before"]  # B's agent ran nothing
    reader = http(api, b.requester)
    error(reader.get(f"/api/proposals/{story['proposal']}"), 404, "NOT_FOUND")
    assert reader.get("/api/timeline", params={"trace_id": story["trace"]}).json()["items"] \
        == []
    assert http(api, b.viewer).get("/api/audit/export",
                                   params={"trace_id": story["trace"]}).text == ""
    job = story["state"]["jobs"]["execute"]["id"]
    error(http(api, b.agent).post(f"/api/jobs/{job}/result",
                                  json={"status": "done", "output": {}}), 404, "NOT_FOUND")


# --- refusals, each with its reason code --------------------------------------------------
@pytest.mark.parametrize("action, args, status, code", [
    ("personal_ops.make_coffee", {}, 422, "G_UNKNOWN_ACTION"),
    ("make_coffee", {}, 422, "G_UNKNOWN_ACTION"),
    ("personal_ops.delete", {}, 422, "G_BAD_ARGUMENTS"),
    ("personal_ops.delete", {"paths": "a.jpg"}, 422, "G_BAD_ARGUMENTS"),
    ("personal_ops.delete", {"paths": ["../outside.txt"]}, 422, "G_BAD_ARGUMENTS"),
    ("personal_ops.delete", {"paths": ["/etc/passwd"]}, 422, "G_BAD_ARGUMENTS"),
    ("personal_ops.rename", {"path": "a.jpg", "new_name": "../x"}, 422, "G_BAD_ARGUMENTS"),
    ("personal_ops.delete", {"paths": ["a"], "force": True}, 422, "G_BAD_ARGUMENTS"),
    ("other_domain.delete", {"paths": ["a"]}, 403, "G_NO_CONTRACT"),
])
def test_bad_proposals_are_denied_with_their_reason_code(api, tenants, action, args, status,
                                                         code):
    a, _ = tenants
    response = http(api, a.requester).post("/api/proposals", json={"action": action,
                                                                   "args": args})
    error(response, status, code)


DENIED_TRACE = "0d3a1ed0-0000-4000-8000-00000000d1ed"


def test_every_denial_is_a_gate_decision_span(api, tenants):
    a, _ = tenants
    response = http(api, a.requester).post(
        "/api/proposals", json={"action": "personal_ops.delete", "args": {}},
        headers={"X-Request-ID": DENIED_TRACE})
    error(response, 422, "G_BAD_ARGUMENTS")
    [span] = [json.loads(line) for line in http(api, a.viewer).get(
        "/api/audit/export", params={"trace_id": DENIED_TRACE}).text.splitlines()]
    assert (span["entity_type"], span["status"], span["content"]["reason"]) == (
        "gate_decision", "deny", "G_BAD_ARGUMENTS")


@pytest.mark.parametrize("kind, extra", [
    ("approval", {"status": "approved", "content": {"roles": ["approver"]}}),
    ("job", {"status": "queued", "content": {"kind": "execute", "action": "delete",
                                              "args": {"paths": ["photos/a.jpg"]}}}),
    ("api_key", {"status": "active", "metadata": {"key_id": "0" * 16, "roles": ["admin"],
                                                  "token_hash": "0" * 64}}),
    ("gate_decision", {"status": "allow"}),
    (" Job ", {}),
])
def test_nobody_forges_governance_spans_through_the_generic_append(api, tenants, kind,
                                                                   extra):
    """POST /api/spans refuses the kinds only the platform writes: an approval or a job
    appended by hand would let an agent act without an approval, an api_key would mint
    roles."""
    a, _ = tenants
    writer = api.key("wendy", "acme", "writer", "reader", "requester")
    response = http(api, writer).post("/api/spans", json={
        "entity_type": kind, "who": "wendy", "this": "forged", "visibility": "tenant",
        **extra})
    assert "written by the platform only" in error(response, 422, "BAD_FIELD")


def test_a_role_the_action_does_not_name_is_denied(api, tenants):
    a, _ = tenants
    # Viewers read the trail; they may not ask for a deletion, nor approve one.
    response = http(api, a.viewer).post("/api/proposals", json={
        "action": "personal_ops.delete", "args": {"paths": ["photos/a.jpg"]}})
    error(response, 403, "G_ROLE_DENIED")


def test_a_tenant_without_an_active_contract_gets_no_contract(api):
    lonely = api.key("lea", "initech", "requester")
    error(http(api, lonely).post("/api/proposals", json={
        "action": "delete", "args": {"paths": ["a"]}}), 403, "G_NO_CONTRACT")
    message = error(http(api, lonely).post("/api/intents", json={"text": "delete a.jpg"}),
                    422, "INTENT_NOT_UNDERSTOOD")
    assert "initech has no active contract" in message
    assert "logline contract activate personal_ops@1.0.0 --tenant initech" in message
    assert "for example none" not in message


def test_a_sentence_no_contract_understands_is_refused_with_examples(api, tenants):
    a, _ = tenants
    message = error(http(api, a.requester).post("/api/intents", json={
        "text": "make me a coffee"}), 422, "INTENT_NOT_UNDERSTOOD")
    assert "delete duplicates in {path}" in message


def test_a_path_escape_that_only_the_disk_can_see_is_refused_by_the_agent(api, tenants,
                                                                           tmp_path):
    """A symlink inside the root pointing outside: the gate cannot know, the agent refuses
    to plan through it, and the request ends as plan_failed with the agent's code."""
    a, _ = tenants
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("keep me")
    (a.root / "escape").symlink_to(outside)
    answer = http(api, a.requester).post("/api/proposals", json={
        "action": "personal_ops.delete", "args": {"paths": ["escape/secret.txt"]}})
    assert answer.json()["outcome"] == "PENDING_APPROVAL", answer.text
    a.run_agent()
    state = http(api, a.approver).get(f"/api/proposals/{answer.json()['proposal_id']}").json()
    assert state["state"] == "plan_failed", state
    assert state["jobs"]["plan"]["result"]["output"]["code"] == "P_SYMLINK"
    error(http(api, a.approver).post(f"/api/approvals/{state['id']}", json={
        "decision": "approve", "reason": "?"}), 409, "G_NOT_PENDING")
    assert (outside / "secret.txt").read_text() == "keep me"


def test_an_expired_approval_never_reaches_the_agent(api, tenants, tmp_path):
    """A tenant's own contract with a one-second approval: approved, then left waiting past
    its validity. The claim re-runs the gate: the job is refused with G_APPROVAL_EXPIRED."""
    _, b = tenants
    quick = personal_ops_as("quick_ops")
    quick["actions"]["delete"]["approval_ttl_s"] = 1
    publish_and_activate(api, b, quick)
    answer = http(api, b.requester).post("/api/proposals", json={
        "action": "quick_ops.delete", "args": {"paths": ["photos/x.jpg"]}}).json()
    b.run_agent()  # the plan
    approved = http(api, b.approver).post(f"/api/approvals/{answer['proposal_id']}", json={
        "decision": "approve", "reason": "ok"}).json()
    assert approved["outcome"] == "ALLOW", approved
    approved_at = time.monotonic()
    while time.monotonic() < approved_at + 1.5:  # the approval's validity is time itself
        time.sleep(0.1)
    b.run_agent()
    state = http(api, b.approver).get(f"/api/proposals/{answer['proposal_id']}").json()
    assert state["jobs"]["execute"]["state"] == "refused", state
    assert (b.root / "photos" / "x.jpg").exists()
    trail = [json.loads(line) for line in http(api, b.viewer).get(
        "/api/audit/export", params={"trace_id": answer["trace_id"],
                                     "entity_type": "gate_decision"}).text.splitlines()]
    assert trail[-1]["content"]["reason"] == "G_APPROVAL_EXPIRED"


def test_a_rejection_ends_the_request(api, tenants):
    a, _ = tenants
    (a.root / "old.txt").write_text("old")
    answer = http(api, a.requester).post("/api/intents", json={"text": "delete old.txt"})
    proposal = answer.json()["proposal_id"]
    a.run_agent()
    rejected = http(api, a.approver).post(f"/api/approvals/{proposal}", json={
        "decision": "reject", "reason": "we still need it"})
    assert (rejected.json()["outcome"], rejected.json()["reason"]) == ("DENY", "G_REJECTED")
    state = http(api, a.viewer).get(f"/api/proposals/{proposal}").json()
    assert state["state"] == "rejected" and state["approvals"][0]["reason"] == \
        "we still need it"
    assert "execute" not in state["jobs"] and (a.root / "old.txt").exists()


# --- the agent ----------------------------------------------------------------------------
def test_agent_status_reports_config_journal_and_server_without_the_secret(tenants):
    a, _ = tenants
    status = json.loads(a.agent_cli("status").stdout)
    assert status["server"]["reachable"] and status["server"]["tenant_id"] == "acme"
    assert a.agent.token not in json.dumps(status)
    assert status["journal"]["finished"] >= 2 and status["journal"]["unacked"] == 0
    assert oct(os.stat(a.state / "config.json").st_mode & 0o777) == "0o600"


def test_agent_configure_refuses_a_key_without_the_agent_role(api, tenants, tmp_path):
    a, _ = tenants
    proc = api.cli("agent", "configure", "--url", api.url, "--token", a.requester.token,
                   "--root", str(a.root), "--state", str(tmp_path / "s"), check=False)
    assert proc.returncode == 2 and "AGENT_ROLE_MISSING" in proc.stderr


def test_a_job_is_claimed_once_and_a_result_is_recorded_once(api, tenants):
    """Two agents of one tenant race for one job; a retried result is acknowledged again,
    a different one refused."""
    a, _ = tenants
    second = api.key("bot2", "acme", "agent")
    answer = http(api, a.requester).post("/api/proposals", json={
        "action": "personal_ops.list_files", "args": {"path": "."}}).json()
    claims = [http(api, k).post("/api/jobs/claim", json={"limit": 5}).json()["jobs"]
              for k in (a.agent, second)]
    got = [j["id"] for jobs in claims for j in jobs]
    assert got.count(answer["job_id"]) == 1
    winner = a.agent if answer["job_id"] in [j["id"] for j in claims[0]] else second
    loser = second if winner is a.agent else a.agent
    result = {"status": "done", "output": {"files": [], "count": 0, "truncated": False}}
    error(http(api, loser).post(f"/api/jobs/{answer['job_id']}/result", json=result), 409,
          "JOB_NOT_CLAIMED")
    first = http(api, winner).post(f"/api/jobs/{answer['job_id']}/result", json=result)
    again = http(api, winner).post(f"/api/jobs/{answer['job_id']}/result", json=result)
    assert (first.json()["new"], again.json()["new"]) == (True, False)
    assert first.json()["result_id"] == again.json()["result_id"]
    error(http(api, winner).post(f"/api/jobs/{answer['job_id']}/result",
                                 json={"status": "failed", "output": {}}), 409,
          "JOB_RESULT_CONFLICT")


def test_a_quorum_of_two_needs_two_different_approvers(api, tenants):
    _, b = tenants
    strict = personal_ops_as("strict_ops")
    strict["actions"]["delete"]["approvals"] = 2
    publish_and_activate(api, b, strict)
    (b.root / "two.txt").write_text("two")
    answer = http(api, b.requester).post("/api/proposals", json={
        "action": "strict_ops.delete", "args": {"paths": ["two.txt"]}}).json()
    assert answer["required"] == 2
    b.run_agent()
    first = http(api, b.approver).post(f"/api/approvals/{answer['proposal_id']}", json={
        "decision": "approve", "reason": "one"}).json()
    assert (first["outcome"], first["reason"], first["approvals"]) == (
        "PENDING_APPROVAL", "G_APPROVAL_REQUIRED", 1)
    second = api.key("quentin", "globex", "approver", "reader")
    answer2 = http(api, second).post(f"/api/approvals/{answer['proposal_id']}", json={
        "decision": "approve", "reason": "two"}).json()
    assert (answer2["outcome"], answer2["approvals"]) == ("ALLOW", 2)
    b.run_agent()
    assert not (b.root / "two.txt").exists()


def test_a_new_contract_version_never_changes_a_decision_taken_under_the_old_one(api,
                                                                                 tenants):
    _, b = tenants
    v1 = personal_ops_as("versioned_ops")
    publish_and_activate(api, b, v1)
    (b.root / "v.txt").write_text("v")
    old = http(api, b.requester).post("/api/proposals", json={
        "action": "versioned_ops.delete", "args": {"paths": ["v.txt"]}}).json()
    b.run_agent()  # the plan, under 1.0.0
    v2 = {**v1, "version": "2.0.0"}
    v2["actions"] = {**v1["actions"], "delete": {**v1["actions"]["delete"], "approvals": 2}}
    publish_and_activate(api, b, v2)
    approved = http(api, b.approver).post(f"/api/approvals/{old['proposal_id']}", json={
        "decision": "approve", "reason": "decided under 1.0.0"}).json()
    assert (approved["outcome"], approved["contract"]) == ("ALLOW", "versioned_ops@1.0.0")
    new = http(api, b.requester).post("/api/proposals", json={
        "action": "versioned_ops.delete", "args": {"paths": ["v.txt"]}}).json()
    assert (new["contract"], new["required"]) == ("versioned_ops@2.0.0", 2)


def test_an_expired_approval_can_be_renewed_by_its_approver(api, tenants):
    """Quorum two, approvals valid one second: the first approval expires before the
    second arrives; its approver renews it and the quorum is met."""
    _, b = tenants
    renewable = personal_ops_as("renew_ops")
    renewable["actions"]["delete"].update(approvals=2, approval_ttl_s=1)
    publish_and_activate(api, b, renewable)
    (b.root / "r.txt").write_text("r")
    answer = http(api, b.requester).post("/api/proposals", json={
        "action": "renew_ops.delete", "args": {"paths": ["r.txt"]}}).json()
    b.run_agent()
    proposal = f"/api/approvals/{answer['proposal_id']}"
    paula, quentin = http(api, b.approver), http(api, api.key("quinn", "globex", "approver"))
    assert paula.post(proposal, json={"decision": "approve", "reason": "1"}).json()[
        "reason"] == "G_APPROVAL_REQUIRED"
    error(paula.post(proposal, json={"decision": "approve", "reason": "again"}), 409,
          "G_APPROVAL_REPLAYED")  # still valid: a replay, not a renewal
    first_at = time.monotonic()
    while time.monotonic() < first_at + 1.5:  # the approval's validity is time itself
        time.sleep(0.1)
    late = quentin.post(proposal, json={"decision": "approve", "reason": "2"}).json()
    assert (late["outcome"], late["reason"]) == ("PENDING_APPROVAL", "G_APPROVAL_EXPIRED")
    renewed = paula.post(proposal, json={"decision": "approve", "reason": "renewed"}).json()
    assert (renewed["outcome"], renewed["approvals"]) == ("ALLOW", 2), renewed


def test_proposal_show_prints_a_requests_results(api, tenants, story):
    a, _ = tenants
    proc = api.cli("proposal", "show", story["proposal"], check=False, LOGLINE_URL=api.url,
                   LOGLINE_TOKEN=a.viewer.token)
    assert proc.returncode == 0, proc.stderr
    assert f"{story['proposal']}  done  personal_ops@1.0.0 delete_duplicates" in proc.stdout
    assert "approved  by paula" in proc.stdout
    assert "done     trash   photos/b.jpg -> .logline-trash/" in proc.stdout


def test_contracts_a_tenant_can_use_are_listed_with_the_active_ones_marked(api, tenants):
    """Over the API (as the tenant, under RLS) and in the operator's CLI: the system's
    contracts and the tenant's own, never another tenant's."""
    a, b = tenants
    listed = {c["ref"]: c for c in http(api, b.viewer).get("/api/contracts").json()["items"]}
    assert listed["personal_ops@1.0.0"]["active"] and listed["api@1.0.0"]["tenant_id"] == \
        "system"
    assert listed["versioned_ops@1.0.0"]["tenant_id"] == "globex"
    assert not listed["versioned_ops@1.0.0"]["active"]  # 2.0.0 replaced it
    assert listed["versioned_ops@2.0.0"]["active"]
    seen_by_a = {c["ref"] for c in http(api, a.viewer).get("/api/contracts").json()["items"]}
    assert "personal_ops@1.0.0" in seen_by_a and not any("_ops@" in r and
                                                         not r.startswith("personal_ops")
                                                         for r in seen_by_a)
    lines = api.cli("contract", "list", "--tenant", "globex").stdout.splitlines()
    assert any(line.startswith("active  versioned_ops@2.0.0") for line in lines), lines
    assert any(line.startswith("        versioned_ops@1.0.0") for line in lines), lines
    assert not any("versioned_ops" in line for line in
                   api.cli("contract", "list", "--tenant", "acme").stdout.splitlines())


# --- crashes and lost acknowledgements ----------------------------------------------------
def queue_list_job(api: Api, tenant: Tenant) -> dict:
    answer = http(api, tenant.requester).post("/api/proposals", json={
        "action": "personal_ops.list_files", "args": {"path": "."}})
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_a_job_the_agent_crashed_in_is_reported_interrupted_and_never_run_again(api, tenants):
    """The journal as a crash leaves it (begun, never finished: see test_agent_journal.py
    for a real SIGKILL): on restart the agent reports the job interrupted and moves on."""
    from stage0.agent.journal import Journal

    a, _ = tenants
    answer = queue_list_job(api, a)
    [job] = http(api, a.agent).post("/api/jobs/claim", json={"limit": 1}).json()["jobs"]
    assert job["id"] == answer["job_id"]
    assert Journal(a.state).begin(job["id"], job)  # ... and the agent died right here
    log = a.run_agent()
    assert {"job_interrupted"} <= {e["action"] for e in log}
    assert not any(e["action"] == "job_started" and e["job_id"] == job["id"] for e in log)
    state = http(api, a.viewer).get(f"/api/proposals/{answer['proposal_id']}").json()
    assert state["state"] == "interrupted", state
    assert Journal(a.state).unacked() == []


def test_a_claim_whose_answer_was_lost_is_delivered_again_and_run_once(api, tenants):
    """The server claimed a job for the agent but the answer never arrived (the agent was
    stopped mid-request, the network dropped): the next claim by that key delivers it."""
    a, _ = tenants
    answer = queue_list_job(api, a)
    [lost] = http(api, a.agent).post("/api/jobs/claim", json={"limit": 1}).json()["jobs"]
    assert lost["id"] == answer["job_id"]
    log = a.run_agent()
    assert [e["job_id"] for e in log if e["action"] == "job_started"] == [lost["id"]]
    state = http(api, a.viewer).get(f"/api/proposals/{answer['proposal_id']}").json()
    assert state["state"] == "done", state
    # Another agent of the tenant is never handed what this key claimed.
    other = api.key("bot3", "acme", "agent")
    assert http(api, other).post("/api/jobs/claim", json={"limit": 5}).json()["jobs"] == []


def test_a_result_the_server_never_acknowledged_is_sent_again(api, tenants):
    """The agent finished a job but the server never answered (down, network gone): the
    result waits in the journal and goes out on the next run."""
    from stage0.agent.journal import Journal

    a, _ = tenants
    answer = queue_list_job(api, a)
    [job] = http(api, a.agent).post("/api/jobs/claim", json={"limit": 1}).json()["jobs"]
    journal = Journal(a.state)
    assert journal.begin(job["id"], job)
    journal.finish(job["id"], "done", {"files": [], "count": 0, "truncated": False})
    assert [j for j, _, _ in journal.unacked()] == [job["id"]]
    a.run_agent()
    state = http(api, a.viewer).get(f"/api/proposals/{answer['proposal_id']}").json()
    assert state["state"] == "done" and state["jobs"]["execute"]["result"]["output"][
        "count"] == 0
    assert Journal(a.state).unacked() == []


def test_the_cli_asks_lists_and_approves_over_the_api(api, tenants):
    a, _ = tenants
    (a.root / "cli").mkdir()
    (a.root / "cli" / "note.txt").write_text("n")

    def logline(key: Key, *args: str) -> str:
        proc = api.cli(*args, check=False, LOGLINE_URL=api.url, LOGLINE_TOKEN=key.token)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    asked = logline(a.requester, "ask", "rename", "cli/note.txt", "to", "memo.txt")
    assert "understood: personal_ops.rename" in asked and "PENDING_APPROVAL" in asked
    proposal = asked.split("proposal_id")[1].split()[0]
    a.run_agent()
    listing = logline(a.approver, "approvals", "list")
    assert proposal in listing and "rename  cli/note.txt -> cli/memo.txt  1 bytes" in listing
    approved = logline(a.approver, "approvals", "approve", proposal, "--reason", "fine")
    assert approved.startswith("ALLOW G_APPROVED")
    a.run_agent()
    assert (a.root / "cli" / "memo.txt").read_text() == "n"


def test_the_cli_inbox_says_which_copy_each_duplicate_keeps(api, tenants):
    """`logline approvals list`: under each file the plan trashes, the file it duplicates,
    which stays, and why that one (a plain name over a copy's, then the older file)."""
    a, _ = tenants
    scans = a.root / "scans"
    (scans / "2023").mkdir(parents=True)
    for name, mtime in (("2023/bill.pdf", 3000), ("bill (1).pdf", 1000),
                        ("Copy of bill.pdf", 500), ("note.txt", 100), ("note-2.txt", 200)):
        data = b"%PDF bill" * 30 if name.endswith(".pdf") else b"the note"
        (scans / name).write_bytes(data)
        os.utime(scans / name, (mtime, mtime))

    def logline(key: Key, *args: str) -> str:
        proc = api.cli(*args, check=False, LOGLINE_URL=api.url, LOGLINE_TOKEN=key.token)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    asked = logline(a.requester, "ask", "delete", "duplicates", "in", "scans")
    proposal = asked.split("proposal_id")[1].split()[0]
    a.run_agent()
    listing = logline(a.approver, "approvals", "list").splitlines()
    start = next(i for i, line in enumerate(listing) if line.startswith(proposal))
    assert listing[start + 1:start + 7] == [
        "    trash   scans/Copy of bill.pdf  270 bytes",
        "      duplicates scans/2023/bill.pdf, which is kept (its name is not copy-like)",
        "    trash   scans/bill (1).pdf  270 bytes",
        "      duplicates scans/2023/bill.pdf, which is kept (its name is not copy-like)",
        "    trash   scans/note-2.txt  8 bytes",
        "      duplicates scans/note.txt, which is kept (the older file)",
    ], "\n".join(listing)
    logline(a.approver, "approvals", "reject", proposal, "--reason", "keep them all")
    assert len(files(scans)) == 5


def test_a_running_agent_wakes_for_new_jobs_and_stops_cleanly_on_sigterm(api, tenants):
    """`logline agent run` long-polls: a job proposed while it waits is run at once (the
    claim is woken by the tenant's NOTIFY, not a timer); SIGTERM ends it with status 0."""
    import signal

    a, _ = tenants
    agent = subprocess.Popen([sys.executable, "-m", "stage0.cli", "agent", "run", "--state",
                              str(a.state)], env=api.env, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert "agent_started" in agent.stderr.readline()
        answer = queue_list_job(api, a)
        deadline = time.monotonic() + 30
        while True:  # polls the API (what a user would watch), never a fixed sleep
            state = http(api, a.viewer).get(f"/api/proposals/{answer['proposal_id']}").json()
            if state["state"] == "done" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert state["state"] == "done", state
    finally:
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    assert "agent_stopped" in err


def test_an_agent_claims_only_the_actions_it_performs(api, tenants):
    """A job of an action this agent does not perform (another contract's) stays queued
    for an agent that does, instead of failing here."""
    _, b = tenants
    contract = personal_ops_as("mail_ops")
    contract["actions"] = {"send_mail": {
        "description": "Send a mail.", "destructive": False, "requesters": ["requester"],
        "args": {"to": {"type": "string", "required": True}}}}
    publish_and_activate(api, b, contract)
    answer = http(api, b.requester).post("/api/proposals", json={
        "action": "mail_ops.send_mail", "args": {"to": "x@example.com"}}).json()
    assert answer["outcome"] == "ALLOW", answer
    b.run_agent()
    state = http(api, b.approver).get(f"/api/proposals/{answer['proposal_id']}").json()
    assert state["jobs"]["execute"]["state"] == "queued", state
    mailer = api.key("mailer", "globex", "agent")
    [job] = http(api, mailer).post("/api/jobs/claim", json={
        "actions": ["send_mail"]}).json()["jobs"]
    assert job["id"] == answer["job_id"]


def test_the_inbox_shows_each_request_as_its_own_page_does(api, tenants):
    """The inbox reads all its requests' approvals and jobs at once: each item must be
    exactly what GET /api/proposals/{id} says of that request alone."""
    a, _ = tenants
    approver = http(api, a.approver)
    items = approver.get("/api/approvals", params={"limit": 200}).json()["items"]
    assert len(items) >= 5
    assert {"done", "rejected"} <= {i["state"] for i in items}
    for item in items:
        assert item == approver.get(f"/api/proposals/{item['id']}").json()
    pending = approver.get("/api/approvals", params={"state": "rejected,done"}).json()
    assert [i["id"] for i in pending["items"]] == [
        i["id"] for i in items if i["state"] in ("rejected", "done")]


def test_the_ledger_verifies_after_all_of_it(api, tenants):
    assert "ok: every hash, signature, key and chain checks out" in api.cli("verify").stdout
