"""Contracts and the gate: pure decisions with stable reason codes, fail-closed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml
from helpers import REPO

from stage0.errors import LoglineError
from stage0.gov.contracts import contract_id, load, parse, to_span
from stage0.gov.gate import Approval, approver_refusal, canonical_action, decide

ROW = REPO / "ROW" / "contracts"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ops():
    return load(ROW / "personal_ops@1.0.0.yaml")


def ask(ops, action, args, roles=("requester",), approvals=(), requester="alice", **kw):
    return decide(action, args, contract=ops, requester=requester, roles=roles, now=NOW,
                  approvals=approvals, **kw)


def approval(who="bob", roles=("approver",), approve=True, age_s=60):
    return Approval(who, frozenset(roles), approve, NOW - timedelta(seconds=age_s))


def test_the_shipped_contract_loads_and_has_a_stable_span_id(ops):
    assert ops.ref == "personal_ops@1.0.0"
    secret = bytes(32)
    span = to_span(ops, secret)
    assert span["id"] == contract_id(secret, "personal_ops", "1.0.0") == \
        to_span(ops, secret)["id"]
    assert span["id"] != contract_id(bytes([1]) * 32, "personal_ops", "1.0.0")  # keyed
    assert span["entity_type"] == "contract" and span["content"]["actions"]["delete"]
    assert all(p.approvals >= 1 for p in ops.actions.values() if p.destructive)


def test_safe_action_is_allowed_without_approval(ops):
    d = ask(ops, "list_files", {"path": "photos"})
    assert (d.outcome, d.reason, d.action) == ("ALLOW", "G_OK", "list_files")


def test_destructive_action_waits_for_approval(ops):
    d = ask(ops, "personal_ops.delete", {"paths": ["a.jpg"]})
    assert (d.outcome, d.reason, d.required) == ("PENDING_APPROVAL", "G_APPROVAL_REQUIRED", 1)


def test_an_approval_by_someone_else_allows(ops):
    d = ask(ops, "delete", {"paths": ["a.jpg"]}, approvals=[approval()])
    assert (d.outcome, d.reason, d.approvals) == ("ALLOW", "G_APPROVED", 1)


@pytest.mark.parametrize("who, roles, agents, reason", [
    ("alice", ("approver",), (), "G_SOD_VIOLATION"),      # the requester approving herself
    ("agent-1", ("approver",), ("agent-1",), "G_SOD_VIOLATION"),  # the executing agent
    ("carol", ("viewer",), (), "G_ROLE_DENIED"),          # not an approver
])
def test_invalid_approvals_do_not_count(ops, who, roles, agents, reason):
    profile = ops.actions["delete"]
    assert approver_refusal(who, roles, "alice", profile, agents) == reason
    d = ask(ops, "delete", {"paths": ["a"]}, approvals=[approval(who, roles)], agents=agents)
    assert d.outcome == "PENDING_APPROVAL" and d.approvals == 0


def test_an_expired_approval_is_named(ops):
    old = approval(age_s=ops.actions["delete"].approval_ttl_s + 1)
    d = ask(ops, "delete", {"paths": ["a"]}, approvals=[old])
    assert (d.outcome, d.reason) == ("PENDING_APPROVAL", "G_APPROVAL_EXPIRED")


def test_a_rejection_denies(ops):
    d = ask(ops, "delete", {"paths": ["a"]}, approvals=[approval(approve=False)])
    assert (d.outcome, d.reason) == ("DENY", "G_REJECTED")


def test_the_same_approver_twice_is_one_approval(ops):
    quorum_two = ops.model_copy(deep=True)
    quorum_two.actions["delete"].approvals = 2
    d = ask(quorum_two, "delete", {"paths": ["a"]}, approvals=[approval(), approval(age_s=5)])
    assert (d.outcome, d.approvals, d.required) == ("PENDING_APPROVAL", 1, 2)
    d = ask(quorum_two, "delete", {"paths": ["a"]},
            approvals=[approval(), approval("dave")])
    assert (d.outcome, d.approvals) == ("ALLOW", 2)


@pytest.mark.parametrize("action, reason", [
    ("format_disk", "G_UNKNOWN_ACTION"),
    ("other_domain.delete", "G_UNKNOWN_ACTION"),
    ("", "G_UNKNOWN_ACTION"),
])
def test_unknown_actions_are_denied(ops, action, reason):
    assert ask(ops, action, {}).reason == reason


def test_no_contract_is_denied():
    d = decide("delete", {"paths": ["a"]}, contract=None, requester="a", roles=["requester"],
               now=NOW)
    assert (d.outcome, d.reason) == ("DENY", "G_NO_CONTRACT")


def test_a_role_outside_the_profile_is_denied(ops):
    d = ask(ops, "delete", {"paths": ["a"]}, roles=("viewer",))
    assert (d.outcome, d.reason) == ("DENY", "G_ROLE_DENIED")


@pytest.mark.parametrize("args, fragment", [
    ({}, "paths is required"),
    ({"paths": []}, "at least 1"),
    ({"paths": "a.jpg"}, "must be a array"),
    ({"paths": ["ok", 3]}, "[1]"),
    ({"paths": ["a\x00b"]}, "NUL"),
    ({"paths": ["a"], "force": True}, "unknown argument"),
    ([], "must be an object"),
])
def test_bad_arguments_are_denied_naming_the_problem(ops, args, fragment):
    d = ask(ops, "delete", args)
    assert (d.outcome, d.reason) == ("DENY", "G_BAD_ARGUMENTS")
    assert fragment in d.message


def test_canonical_action_names():
    assert canonical_action(" Personal_Ops.Delete ", None) == "delete"


@pytest.mark.parametrize("change, field", [
    ({"version": "1.0"}, "version"),
    ({"actions": {"wipe": {"description": "x", "destructive": True,
                           "requesters": ["requester"]}}}, "approvals"),
    ({"actions": {"peek": {"description": "x", "destructive": False,
                           "requesters": ["ghost"]}}}, "undeclared roles"),
    ({"colour": "red"}, "colour"),
])
def test_invalid_contracts_are_refused_with_the_field(ops, change, field):
    data = {**ops.model_dump(mode="json"), **change}
    with pytest.raises(LoglineError) as err:
        parse(data, "test.yaml")
    assert err.value.code == "CONTRACT_INVALID" and field in str(err.value)


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "x@1.0.0.yaml"
    path.write_text("name: x\nversion: 1.0.0\nroles: [a\n")
    with pytest.raises(LoglineError) as err:
        load(path)
    assert err.value.code == "CONTRACT_BAD_YAML" and ":" in err.value.where


def test_the_file_name_must_match_the_contract(tmp_path, ops):
    path = tmp_path / "personal_ops@9.9.9.yaml"
    path.write_text(yaml.safe_dump(ops.model_dump(mode="json")))
    with pytest.raises(LoglineError) as err:
        load(path)
    assert err.value.code == "CONTRACT_FILE_NAME"


# --- every HTTP route is an action of the api contract -------------------------------------
def test_every_route_maps_to_exactly_one_action_and_every_action_to_one_profile():
    """A new route without a profile (or a profile without its route) fails here."""
    from stage0.api.app import endpoints

    ENDPOINTS = endpoints()
    api = load(ROW / "api@1.0.0.yaml")
    actions = [e.action for e in ENDPOINTS]
    assert len(actions) == len(set(actions)), "two routes share an action"
    assert all(a.startswith("api.") for a in actions), actions
    assert sorted(a.removeprefix("api.") for a in actions) == sorted(api.actions), \
        "routes and api contract profiles differ"
    routes = {(e.method, e.path) for e in ENDPOINTS}
    assert len(routes) == len(ENDPOINTS), "one route is declared twice"


def test_a_route_whose_action_has_no_profile_is_denied_not_allowed():
    from stage0.gov.routes_gate import route_decision

    api = load(ROW / "api@1.0.0.yaml")
    assert route_decision(api, "api.not_a_route", None).reason == "G_NO_PROFILE"
    assert route_decision(None, "api.health_read", None).reason == "G_NO_CONTRACT"
    assert route_decision(api, "api.health_read", None).outcome == "ALLOW"
